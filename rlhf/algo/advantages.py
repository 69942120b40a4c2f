"""Advantage estimators and whitening. Tensors are (B, T) over response tokens with a float mask (1 = real token)."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).pow(2), mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor, all_sum: Callable[[torch.Tensor], torch.Tensor]):
    """(mean over the masked entries of every rank, their count); all_sum sums a tensor over ranks."""
    s = all_sum(torch.stack([(x * mask).sum(), mask.sum()]))
    n = s[1].clamp(min=1.0)
    return s[0] / n, n


def global_mean_var(x: torch.Tensor, mask: torch.Tensor, all_sum: Callable[[torch.Tensor], torch.Tensor]):
    """masked mean and unbiased variance over the masked entries of every rank (all_sum sums a tensor over ranks)."""
    mean, n = global_masked_mean(x, mask, all_sum)
    var = all_sum(((x - mean).pow(2) * mask).sum().reshape(1))[0] / n
    return mean, var * n / (n - 1) if float(n) > 1 else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  all_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """(x - mean) / std over masked entries; with shift_mean=False the mean is added back (scale only).

    all_sum (sums a tensor over data-parallel ranks) makes mean and std those of the global batch, as one process
    holding the whole batch would compute them; None: this tensor's own statistics."""
    if all_sum is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        mean, var = global_mean_var(x, mask, all_sum)
    std = var.add(eps).sqrt()
    out = (x - mean) / std
    if not shift_mean:
        out = out + mean
    return out * mask


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """PPO per-token reward: -kl_coef * kl at every response token, plus the sequence score on its last real token."""
    rewards = -kl_coef * kl * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rows = torch.arange(mask.shape[0], device=mask.device)
    has_tokens = mask.sum(-1) > 0
    rewards[rows[has_tokens], last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t;  A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}.
    Padded positions get advantage 0 and never leak into real ones. Returns (advantages, returns = A + V).
    """
    rewards = rewards * mask
    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    next_mask = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_adv = delta + gamma * lam * next_mask * next_adv
        adv[:, t] = next_adv * mask[:, t]
        next_value, next_mask = values[:, t], mask[:, t]
        next_adv = adv[:, t]
    return adv, (adv + values) * mask


def group_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: (r - mean(group)) / (std(group) + eps) per prompt group; rows i*G .. i*G+G-1 form group i.

    std is the unbiased sample std (Bessel), as in the GRPO paper's reference code. A group whose rewards are all
    equal gets advantage exactly 0 (no signal, no NaN, no rounding noise: the statistics are taken in float64 and a
    group with max == min is zeroed). With scale_by_std=False only the mean is removed (Dr. GRPO).
    Returns float32 (the dtype of the rest of the update).
    """
    if scores.numel() % group_size != 0:
        raise ValueError(f"algo.samples_per_prompt: {scores.numel()} rewards do not split into groups of {group_size}")
    grouped = scores.reshape(-1, group_size).double()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    flat = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    centred = centred.masked_fill(flat, 0.0)
    return centred.reshape(-1).float()


def kl_shaped_scores(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Sequence scores with the KL penalty folded in: r - kl_coef * sum_t kl_t (GRPO/RLOO-style kl_in=reward).

    Applied before group normalisation, as verl does for its outcome-reward estimators."""
    return scores - kl_coef * (kl * mask).sum(-1).to(scores.dtype)
