"""Uncertainty routing between a fast reward model and an LLM judge ("Ask a Strong LLM Judge when Your Reward Model is
Uncertain", arXiv 2510.20369), as pure tensor functions.

Advantage estimation is cast as pairwise preference: within each group of replies to one prompt, every pair (i, j)
gets P(i better than j). The RM gives sigmoid(r_i - r_j) (an ensemble: the members' mean of it, with their spread as
epistemic uncertainty); the most uncertain pairs, up to a budget, are asked to the judge instead. A reply's reward is
its mean win probability against the rest of its group.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch


def group_pairs(batch_size: int, group_size: int) -> torch.Tensor:
    """(P, 2) index pairs (i, j), i < j, inside each run of ``group_size`` consecutive rows."""
    if group_size < 2 or batch_size % group_size:
        raise ValueError(f"routing needs groups of >= 2 replies per prompt; got batch {batch_size}, group {group_size}")
    local = torch.combinations(torch.arange(group_size), r=2)
    return torch.cat([local + g for g in range(0, batch_size, group_size)])


def pair_probs(member_scores: torch.Tensor, pairs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, B) scores -> (P(first better) averaged over members, its population std over members), each (P,)."""
    p = torch.sigmoid(member_scores[:, pairs[:, 0]] - member_scores[:, pairs[:, 1]])
    return p.mean(0), p.std(0, unbiased=False)


def uncertainty(p: torch.Tensor, spread: torch.Tensor, by: str) -> torch.Tensor:
    """Higher = more uncertain. margin: 0.5 - |p - 0.5| (the RM's preference is close to a coin flip); ensemble: the
    members' disagreement (spread)."""
    if by == "margin":
        return 0.5 - (p - 0.5).abs()
    if by == "ensemble":
        return spread
    raise ValueError(f"reward.route_by: {by!r} has no uncertainty (margin | ensemble)")


def budget_count(n: int, budget: float) -> int:
    """Judge calls for n pairs at a budget fraction (rounded half up, so 25 % of 2 pairs is 1 call)."""
    return min(n, int(math.floor(budget * n + 0.5)))


def route_mask(scores: Optional[torch.Tensor], n: int, budget: float,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n,) bool: the budget_count(n, budget) pairs with the highest uncertainty ``scores`` (ties: lower index
    first), or a uniform random subset of that size when ``scores`` is None (the random-routing baseline)."""
    k = budget_count(n, budget)
    mask = torch.zeros(n, dtype=torch.bool)
    if k == 0:
        return mask
    if scores is None:
        idx = torch.randperm(n, generator=generator)[:k]
    else:
        order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
        idx = torch.tensor(order[:k])
    mask[idx] = True
    return mask


def win_rates(p: torch.Tensor, pairs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B,) each reply's mean P(it beats the other) over the pairs it is in (0.5 for a reply in no pair)."""
    wins = torch.zeros(batch_size, dtype=torch.float32)
    counts = torch.zeros(batch_size, dtype=torch.float32)
    wins.index_add_(0, pairs[:, 0], p.float())
    wins.index_add_(0, pairs[:, 1], 1.0 - p.float())
    counts.index_add_(0, pairs[:, 0], torch.ones(len(pairs)))
    counts.index_add_(0, pairs[:, 1], torch.ones(len(pairs)))
    return torch.where(counts > 0, wins / counts.clamp_min(1.0), torch.full_like(wins, 0.5))


def pair_accuracy_of(p_chosen_first: torch.Tensor) -> float:
    """Accuracy of preference probabilities on (chosen, rejected) pairs: 1 above 0.5, 1/2 at 0.5, 0 below."""
    p = p_chosen_first.float()
    return float(((p > 0.5).float() + 0.5 * (p == 0.5).float()).mean())


def routed_accuracy(rm_p: torch.Tensor, judge_p: torch.Tensor, fractions: Sequence[float],
                    scores: Dict[str, Optional[torch.Tensor]], random_draws: int = 50,
                    seed: int = 0) -> Dict[str, List[float]]:
    """Accuracy on (chosen, rejected) pairs when a fraction of them is decided by the judge instead of the RM, per
    routing rule (``scores``: name -> uncertainty, or None for random routing, averaged over ``random_draws``)."""
    out: Dict[str, List[float]] = {}
    for name, unc in scores.items():
        accs = []
        for f in fractions:
            draws = 1 if unc is not None else random_draws
            gen = torch.Generator().manual_seed(seed)
            acc = 0.0
            for _ in range(draws):
                mask = route_mask(unc, len(rm_p), f, gen)
                acc += pair_accuracy_of(torch.where(mask, judge_p, rm_p))
            accs.append(acc / draws)
        out[name] = accs
    return out
