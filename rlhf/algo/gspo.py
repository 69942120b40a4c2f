"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): GRPO's group advantages, but the importance ratio
and its clipping are per sequence. s_i = exp(mean_t log(pi / pi_old)) (the length-normalised sequence ratio) is
clipped to [1 - clip_low, 1 + clip_high] (tiny ranges, 3e-4 / 4e-4 in the paper) and every token of a reply shares it.
Token-level form with the same value and gradient: s_i,t = sg[s_i] * pi_t / sg[pi_t]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from rlhf.algo.advantages import masked_mean
from rlhf.algo.base import GroupRelative, PolicyGradientConfig
from rlhf.algo.losses import aggregate
from rlhf.algo.registry import register
from rlhf.config import range_errors


def gspo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                     clip_low: float, clip_high: float, agg: str = "seq_mean", norm_tokens: float = 0.0,
                     is_weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """max(-A * s, -A * clip(s, 1 - clip_low, 1 + clip_high)) per token with the sequence ratio s (see module doc).

    The log of the combined ratio is capped at 10 (exp stays finite). Stats: clip_frac (share of tokens whose clipped
    branch is active, i.e. of sequences weighted by length), approx_kl (k3, old vs new, token mean) and seq_ratio_mean.
    """
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0) * mask
    seq_log_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1.0)
    log_s = (logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=10.0)
    s = torch.exp(log_s)
    unclipped = -advantages * s
    clipped = -advantages * s.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = aggregate(per_token, mask, agg, norm_tokens)
    with torch.no_grad():
        has = (mask.sum(-1) > 0).float()
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(torch.exp(-log_ratio) - 1.0 + log_ratio, mask),
                 "seq_ratio_mean": (seq_log_ratio.exp() * has).sum() / has.sum().clamp(min=1.0)}
    return loss, stats


@dataclass
class GSPOConfig(PolicyGradientConfig):
    name: str = "gspo"
    min_samples_per_prompt = 2
    scale_by_std: bool = True
    clip_low: float = 3e-4
    clip_high: float = 4e-4
    loss_agg: str = "seq_mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"

    def errors(self) -> List[str]:
        return super().errors() + range_errors(self, "algo", non_negative=["clip_low", "clip_high"])


@register
class GSPO(GroupRelative):
    name = "gspo"
    schema = GSPOConfig

    def policy_loss(self, logp, old_logp, advantages, mask, is_weights):
        c = self.cfg
        return gspo_policy_loss(logp, old_logp, advantages, mask, c.clip_low, c.clip_high, c.loss_agg,
                                c.loss_norm_tokens, is_weights)
