"""Reward sources. `build_reward` maps `reward.name` to an implementation."""

from __future__ import annotations

from rlhf.config import Config
from rlhf.reward.base import RewardContext, RewardOutput, RewardSource
from rlhf.reward.exact_match import ExactMatchReward
from rlhf.reward.judge_reward import build_judge_reward
from rlhf.reward.routed import build_routed_reward
from rlhf.reward.self_reward import build_self_reward

__all__ = ["RewardContext", "RewardOutput", "RewardSource", "build_reward"]


def build_reward(cfg: Config, context: RewardContext) -> RewardSource:
    """context: the trainer's shared objects (tokenizer, policy, run_dir, device), for judges that share the base."""
    name = cfg.reward.name
    if name == "exact_match":
        return ExactMatchReward(cfg.reward)
    if name in ("bt_rm", "rubric_judge", "lora_judge"):
        return build_judge_reward(cfg, context)
    if name == "self_reward":
        return build_self_reward(cfg, context)
    if name == "routed":
        return build_routed_reward(cfg, context)
    raise ValueError(f"reward.name: unknown reward source {name!r}")
