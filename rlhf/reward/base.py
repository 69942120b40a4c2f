"""The reward-source interface: score(Rollout) -> per-sequence rewards plus diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch

from rlhf.config import Config
from rlhf.rollout.base import Rollout


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (B,) float32, one scalar per sequence
    metrics: Dict[str, float] = field(default_factory=dict)  # batch-level diagnostics, logged as reward/<key>
    correct: torch.Tensor | None = None  # (B,) bool where the source knows ground truth (EM on the batch)


@dataclass
class RewardContext:
    """What a reward may borrow from the run that builds it (a judge reuses the actor's base model and tokenizer)."""

    cfg: Config
    tokenizer: Any
    run_dir: Path
    device: torch.device
    # the actor's nn.Module: a PreTrainedModel, or a peft PeftModel when model.lora.enabled
    actor_model: Optional[torch.nn.Module] = None
    # full fine-tuning: the frozen reference copy (a rubric judge can run on it); None with LoRA
    reference_model: Optional[torch.nn.Module] = None
    # log(metrics: dict, step: int, prefix: str) -> None: writes to the run's metrics.jsonl / wandb
    log: Optional[Callable[..., None]] = None
    # the run's rollout engine (judge.vllm scores the judge's verdict tokens with a vLLM engine)
    rollout_engine: Any = None
    # sample_policy(num_prompts, samples_each) -> [(prompt meta, [sampled replies])]: the actor's replies to a seeded
    # draw of train-split prompts (judge.policy_pairs trains the judge/RM on them); None outside a training run
    sample_policy: Optional[Callable[[int, int], List[Tuple[Dict[str, Any], List[str]]]]] = None


class RewardSource(Protocol):
    def score(self, rollout: Rollout) -> RewardOutput:
        """Rewards (and batch diagnostics) for every sequence of a rollout."""
        ...

    def score_replies(self, metas: List[Dict[str, Any]], replies: List[str]) -> torch.Tensor:
        """(B,) rewards of replies to the prompts described by metas (TaskItem.meta): held-out chat metrics."""
        ...
