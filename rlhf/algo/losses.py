"""Policy and value losses with clipping, entropy, and loss aggregation over masked tokens."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from rlhf.algo.advantages import masked_mean


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str, norm_tokens: float = 0.0) -> torch.Tensor:
    """How per-token losses become one number.

    token_mean: mean over all real tokens in the batch; seq_mean: mean over sequences of each one's token mean;
    seq_mean_token_sum_norm (Dr. GRPO): mean over sequences of each one's token *sum* divided by the constant
    norm_tokens (the generation budget), so a long reply's tokens weigh as much as a short one's. The sequence means
    count non-empty sequences (an empty reply has no tokens to train; verl counts it, which only rescales the loss).
    """
    if mode == "token_mean":
        return masked_mean(loss, mask)
    if mode in ("seq_mean", "seq_mean_token_sum_norm"):
        if mode == "seq_mean":
            per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        else:
            if not norm_tokens > 0:
                raise ValueError(f"algo.loss_norm_tokens: seq_mean_token_sum_norm needs a constant > 0, "
                                 f"got {norm_tokens}")
            per_seq = (loss * mask).sum(-1) / norm_tokens
        has = (mask.sum(-1) > 0).float()
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"algo.loss_agg: unknown aggregation {mode!r}")


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    agg: str = "token_mean",
    is_weights: Optional[torch.Tensor] = None,
    dual_clip_c: float = 0.0,
    norm_tokens: float = 0.0,
    clip_high: Optional[float] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """PPO surrogate: mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    clip_high (DAPO's clip-higher): the upper bound becomes 1 + clip_high while the lower stays 1 - clip_eps.

    dual_clip_c > 1 (dual-clip PPO): where A < 0 the per-token loss is additionally capped at -A * c, so a token whose
    ratio has run far above 1 cannot produce an unbounded loss. is_weights: optional per-token truncated importance
    weights (trainer vs rollout-engine probabilities). Returns (loss, stats): clip_frac, approx_kl (k3 between old
    and new) and, with dual clipping on, dual_clip_frac, as detached scalars.
    """
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    upper = clip_eps if clip_high is None else clip_high
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + upper)
    per_token = torch.maximum(unclipped, clipped)
    stats: Dict[str, torch.Tensor] = {}
    if dual_clip_c > 0:
        cap = -advantages * dual_clip_c
        capped = (advantages < 0) & (per_token > cap)
        per_token = torch.where(capped, cap, per_token)
        stats["dual_clip_frac"] = masked_mean(capped.float(), mask).detach()
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = aggregate(per_token, mask, agg, norm_tokens)
    with torch.no_grad():
        stats["clip_frac"] = masked_mean((clipped > unclipped).float(), mask)
        stats["approx_kl"] = masked_mean(torch.exp(-log_ratio) - 1.0 + log_ratio, mask)
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    agg: str = "token_mean",
    norm_tokens: float = 0.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """0.5 * max((V - R)^2, (V_clip - R)^2) with V_clip = V_old + clip(V - V_old, -eps, eps). eps=0 disables clipping.

    value_clip_frac counts the tokens whose value really moved past the clip range (|V - V_old| > eps) and where the
    clipped branch is the larger loss: old + clamp(V - old) can differ from V by one rounding step without any clamp,
    and that must not count as clipping."""
    unclipped = (values - returns).pow(2)
    if clip_eps > 0:
        delta = values - old_values
        v_clip = old_values + delta.clamp(-clip_eps, clip_eps)
        clipped = (v_clip - returns).pow(2)
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        with torch.no_grad():
            frac = masked_mean(((delta.abs() > clip_eps) & (clipped > unclipped)).float(), mask)
    else:
        per_token = 0.5 * unclipped
        frac = torch.zeros(())
    return aggregate(per_token, mask, agg, norm_tokens), {"value_clip_frac": frac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits) over the last dim."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def truncated_is_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling: min(pi_trainer / pi_engine, cap) per token, detached."""
    return torch.exp(trainer_logp - engine_logp).clamp(max=cap).detach()
