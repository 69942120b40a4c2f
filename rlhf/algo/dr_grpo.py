"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): GRPO without its two biases. Advantages are
group-centred but not divided by the group std, and the loss sums each reply's token losses and divides by a constant
(algo.loss_norm_tokens, default the generation budget) instead of the reply's own length, so long wrong replies are not
penalised less per token than short ones."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.algo.base import ClippedConfig, GroupRelative
from rlhf.algo.registry import register


@dataclass
class DrGRPOConfig(ClippedConfig):
    name: str = "dr_grpo"
    min_samples_per_prompt = 2
    scale_by_std: bool = False
    loss_agg: str = "seq_mean_token_sum_norm"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"


@register
class DrGRPO(GroupRelative):
    name = "dr_grpo"
    schema = DrGRPOConfig
