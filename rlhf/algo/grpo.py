"""GRPO (Shao et al. 2024, DeepSeekMath): no critic; each reply's advantage is its reward minus the mean of its prompt's
group, over the group's std; the PPO clipped surrogate per token; the KL to the reference as a loss term (k3)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.algo.base import ClippedConfig, GroupRelative
from rlhf.algo.registry import register


@dataclass
class GRPOConfig(ClippedConfig):
    name: str = "grpo"
    min_samples_per_prompt = 2
    scale_by_std: bool = True
    kl_coef: float = 0.04
    kl_estimator: str = "k3"
    kl_in: str = "loss"


@register
class GRPO(GroupRelative):
    name = "grpo"
    schema = GRPOConfig
