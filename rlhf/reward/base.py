"""The reward-source interface: score(Rollout) -> per-sequence rewards plus diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Protocol

import torch

from rlhf.rollout.base import Rollout


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (B,) float32, one scalar per sequence
    metrics: Dict[str, float] = field(default_factory=dict)  # batch-level diagnostics, logged as reward/<key>
    correct: torch.Tensor | None = None  # (B,) bool where the source knows ground truth (EM on the batch)


class RewardSource(Protocol):
    def score(self, rollout: Rollout) -> RewardOutput:
        """Rewards (and batch diagnostics) for every sequence of a rollout."""
        ...

    def score_replies(self, metas: List[Dict[str, Any]], replies: List[str]) -> torch.Tensor:
        """(B,) rewards of replies to the prompts described by metas (TaskItem.meta): held-out chat metrics."""
        ...
