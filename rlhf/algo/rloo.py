"""RLOO (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019): REINFORCE with a leave-one-out baseline. Each of a
prompt's k replies is compared with the mean reward of the other k - 1, an unbiased baseline that uses no critic and no
std scaling; the KL penalty is folded into the sequence reward. The PPO clipped surrogate lets one rollout feed several
minibatch steps (with epochs=1 and one minibatch it is plain REINFORCE: ratio 1, no clipping)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.algo.advantages import kl_shaped_scores
from rlhf.algo.base import ClippedConfig, PolicyGradient
from rlhf.algo.registry import register


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """r_i - mean_{j != i} r_j within each group of group_size consecutive rows (= k/(k-1) * (r_i - mean_group)).

    Needs group_size >= 2 (one sample has no other to compare with). Computed in float64; returns float32."""
    if group_size < 2:
        raise ValueError(f"algo.samples_per_prompt: rloo needs at least 2 samples per prompt, got {group_size}")
    if scores.numel() % group_size != 0:
        raise ValueError(f"algo.samples_per_prompt: {scores.numel()} rewards do not split into groups of {group_size}")
    grouped = scores.reshape(-1, group_size).double()
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1).float()


@dataclass
class RLOOConfig(ClippedConfig):
    name: str = "rloo"
    min_samples_per_prompt = 2
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_in: str = "reward"


@register
class RLOO(PolicyGradient):
    name = "rloo"
    schema = RLOOConfig

    def advantages(self, scores, mask, kl, values, group_size, kl_coef, all_sum):
        if self.cfg.kl_in == "reward" and kl_coef > 0:
            scores = kl_shaped_scores(scores, kl, mask, kl_coef)
        return leave_one_out_advantages(scores, group_size).unsqueeze(1) * mask, None
