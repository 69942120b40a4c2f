"""PPO (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019 / Ouyang et al. 2022): a value head on the policy
trunk, GAE over per-token rewards (the KL penalty at every token, the sequence score on the last), the clipped
surrogate and a clipped value loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from rlhf.algo.advantages import gae, masked_whiten, token_rewards
from rlhf.algo.base import ClippedConfig, PolicyGradient
from rlhf.algo.losses import clipped_value_loss
from rlhf.algo.registry import register
from rlhf.config import range_errors


@dataclass
class PPOConfig(ClippedConfig):
    name: str = "ppo"
    whiten_advantages: bool = True
    critic_lr: float = 5e-5
    value_clip_eps: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    # scale (not shift) the sequence scores by their batch std before the KL penalty is added
    whiten_rewards: bool = False

    def errors(self) -> List[str]:
        return super().errors() + range_errors(self, "algo", positive=["critic_lr"],
                                               non_negative=["value_clip_eps", "vf_coef"], unit=["gamma", "lam"])


@register
class PPO(PolicyGradient):
    name = "ppo"
    schema = PPOConfig
    needs_critic = True

    def advantages(self, scores, mask, kl, values, group_size, kl_coef, all_sum):
        assert values is not None, "ppo needs a value head"
        c = self.cfg
        if c.whiten_rewards:
            scores = masked_whiten(scores, torch.ones_like(scores), shift_mean=False, all_sum=all_sum)
        penalty = kl_coef if c.kl_in == "reward" else 0.0
        return gae(token_rewards(scores, kl, mask, penalty), values, mask, c.gamma, c.lam)

    def extra_loss(self, out, mb):
        if out.values is None or mb.returns is None:
            return None, {}
        c = self.cfg
        v_loss, v_stats = clipped_value_loss(out.values, mb.old_values, mb.returns, mb.mask, c.value_clip_eps,
                                             c.loss_agg, c.loss_norm_tokens)
        return c.vf_coef * v_loss, {"value_loss": v_loss.detach(), **v_stats}
