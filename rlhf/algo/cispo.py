"""CISPO (MiniMax-M1, 2025; the loss ScaleRL 2025 adopts): GRPO's group advantages with a REINFORCE-style loss whose
importance weight is clipped and detached, -sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi. Unlike PPO's
clipped surrogate no token is dropped from the gradient: a token with a large ratio still contributes, with a capped
weight. Defaults: no lower truncation (clip_low 1: the weight is only kept >= 0) and a cap of 5 on the ratio
(clip_high 4; TRL's epsilon_high=5 for loss_type=cispo is the same cap, written as the ratio itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from rlhf.algo.advantages import masked_mean
from rlhf.algo.base import GroupRelative, PolicyGradientConfig
from rlhf.algo.losses import aggregate
from rlhf.algo.registry import register
from rlhf.config import range_errors


def cispo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip_low: float, clip_high: float, agg: str = "token_mean", norm_tokens: float = 0.0,
                      is_weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """-sg(clip(ratio, 1 - clip_low, 1 + clip_high)) * A * logp per token, aggregated by `agg`.

    Stats: clip_frac (tokens whose weight was truncated), approx_kl (k3, old vs new)."""
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    per_token = -weight * advantages * logp
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = aggregate(per_token, mask, agg, norm_tokens)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((weight != ratio).float(), mask),
                 "approx_kl": masked_mean(torch.exp(-log_ratio) - 1.0 + log_ratio, mask)}
    return loss, stats


@dataclass
class CISPOConfig(PolicyGradientConfig):
    name: str = "cispo"
    min_samples_per_prompt = 2
    scale_by_std: bool = True
    clip_low: float = 1.0
    clip_high: float = 4.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"

    def errors(self) -> List[str]:
        errors = super().errors() + range_errors(self, "algo", non_negative=["clip_high"])
        if not 0.0 <= self.clip_low <= 1.0:
            errors.append(f"algo.clip_low: must be in [0, 1] (the weight's floor is 1 - clip_low), got {self.clip_low}")
        return errors


@register
class CISPO(GroupRelative):
    name = "cispo"
    schema = CISPOConfig

    def policy_loss(self, logp, old_logp, advantages, mask, is_weights):
        c = self.cfg
        return cispo_policy_loss(logp, old_logp, advantages, mask, c.clip_low, c.clip_high, c.loss_agg,
                                 c.loss_norm_tokens, is_weights)
