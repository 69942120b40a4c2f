"""Pure functions turning verdict-token logits into probabilities and scores."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch


def verdict_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the verdict-token logits only (last dim = verdict tokens); rows sum to 1."""
    return torch.softmax(logits.float(), dim=-1)


def symmetric_pairwise(p_ab: torch.Tensor, p_ba: torch.Tensor) -> torch.Tensor:
    """P(first response better), averaged over both presentation orders to cancel position bias.

    p_ab: (N, 2) [P("A"), P("B")] with the first response shown as A; p_ba: the same with it shown as B.
    Returns (P("A" | AB) + P("B" | BA)) / 2, so swapping the responses gives exactly 1 - this value.
    """
    return 0.5 * (p_ab[:, 0] + p_ba[:, 1])


def expected_score(probs: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    """Expected rubric score sum_k p_k * v_k, one per row."""
    v = torch.as_tensor(list(values), dtype=probs.dtype, device=probs.device)
    return probs @ v


def position_bias(p_ab: torch.Tensor, p_ba: torch.Tensor) -> torch.Tensor:
    """Mean P("A") over both orders minus 0.5: > 0 means the judge favours whichever response is shown first."""
    return 0.5 * (p_ab[:, 0] + p_ba[:, 0]) - 0.5


def weighted_total(scores: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(N, C) per-criterion scores -> (N,) sum_c w_c * s_c (weights already normalised to sum 1). One criterion of
    weight 1 returns its column unchanged, bit for bit."""
    w = torch.as_tensor(list(weights), dtype=scores.dtype, device=scores.device)
    return (scores * w).sum(-1)


def criterion_means(per_criterion: Dict[str, List[torch.Tensor]]) -> Dict[str, float]:
    """{name: [score tensors]} -> {"criterion/<name>_mean": mean over all the scores of that criterion}."""
    return {f"criterion/{name}_mean": float(torch.cat(parts).float().mean())
            for name, parts in per_criterion.items() if sum(p.numel() for p in parts)}
