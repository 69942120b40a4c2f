"""Preference-pair losses for Bradley-Terry reward models (``reward.robust``), as pure tensor functions.

Every loss reads the reward margins d_i = r(chosen_i) - r(rejected_i) - judge.margin of a batch and returns the
mean loss with its per-pair auxiliary variable (detached), so the trainer can log it.

- ``none``: plain BT, -log sigmoid(d).
- ``r3m`` (Bukharin et al. 2024, "Robust RLHF from Corrupted Human Feedback"): each pair may carry a non-negative
  outlier term delta_i with an l1 penalty, min over delta of -log sigmoid(d + delta) + lam * delta. The inner minimum
  has a closed form: delta_i = max(0, log((1 - lam) / lam) - d_i). A pair the model ranks far below that threshold
  (a likely flipped label) is absorbed by its delta: its gradient on the reward is capped at lam instead of rising
  to 1. Alternating minimisation as in the paper, with the delta step exact for the current batch.
- ``adaptive`` (Hong et al. 2024, "Adaptive Preference Scaling"): each pair gets its own scale tau_i in
  [tau_min, tau_max]: min over tau of tau * softplus(-d / tau) + (rho - log 2) * tau, the dual of a KL-constrained
  (radius rho < log 2) worst case over the pair's two outcomes. The objective is convex in tau; the minimiser is small
  for ambiguous pairs (|d| small: a hinge-like loss that stops pushing once ranked) and large for clear ones (a
  near-linear loss that keeps separating them). tau is found by bisection on the derivative and held fixed for the
  reward step (exact by the envelope theorem). tau = 1 everywhere is plain BT.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)


def bt_pair_loss(d: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Plain Bradley-Terry: mean of -log sigmoid(d)."""
    return {"loss": F.softplus(-d).mean()}


def r3m_delta(d: torch.Tensor, lam: float) -> torch.Tensor:
    """The exact minimiser over delta >= 0 of -log sigmoid(d + delta) + lam * delta, for lam in (0, 1)."""
    return (math.log((1.0 - lam) / lam) - d.detach()).clamp_min(0.0)


def r3m_loss(d: torch.Tensor, lam: float) -> Dict[str, torch.Tensor]:
    """R3M: mean over pairs of -log sigmoid(d + delta) + lam * delta at the optimal (detached) delta."""
    delta = r3m_delta(d, lam)
    return {"loss": (F.softplus(-(d + delta)) + lam * delta).mean(), "delta": delta,
            "outlier_fraction": (delta > 0).float().mean()}


def adaptive_objective(d: torch.Tensor, tau: torch.Tensor, rho: float) -> torch.Tensor:
    """Per-pair tau * softplus(-d / tau) + (rho - log 2) * tau."""
    return tau * F.softplus(-d / tau) + (rho - LOG2) * tau


def adaptive_tau(d: torch.Tensor, rho: float, tau_min: float, tau_max: float, iters: int = 40) -> torch.Tensor:
    """Per-pair minimiser of adaptive_objective over [tau_min, tau_max] (convex in tau: bisection on its slope).

    d/dtau = softplus(-u) + u * sigmoid(-u) + rho - log 2 with u = d / tau; increasing in tau."""
    d = d.detach().double()
    lo = torch.full_like(d, tau_min)
    hi = torch.full_like(d, tau_max)

    def slope(t: torch.Tensor) -> torch.Tensor:
        u = d / t
        return F.softplus(-u) + u * torch.sigmoid(-u) + rho - LOG2

    for _ in range(iters):
        mid = (lo + hi) / 2
        up = slope(mid) < 0  # still descending: the minimum lies above mid
        lo = torch.where(up, mid, lo)
        hi = torch.where(up, hi, mid)
    tau = (lo + hi) / 2
    tau = torch.where(slope(torch.full_like(d, tau_min)) >= 0, torch.full_like(d, tau_min), tau)
    tau = torch.where(slope(torch.full_like(d, tau_max)) <= 0, torch.full_like(d, tau_max), tau)
    return tau.to(torch.float32)


def adaptive_loss(d: torch.Tensor, rho: float, tau_min: float, tau_max: float) -> Dict[str, torch.Tensor]:
    """Adaptive preference scaling: mean adaptive_objective at the optimal (detached) per-pair tau."""
    tau = adaptive_tau(d, rho, tau_min, tau_max).to(d.device)
    return {"loss": adaptive_objective(d, tau, rho).mean(), "tau": tau, "tau_mean": tau.mean()}


def pair_loss_fn(robust: str, r3m_lambda: float = 0.3, adaptive_rho: float = 0.1, adaptive_tau_min: float = 0.1,
                 adaptive_tau_max: float = 4.0) -> Callable[[torch.Tensor], Dict[str, torch.Tensor]]:
    """reward.robust -> a function of the margins d (see the module docstring)."""
    if robust == "none":
        return bt_pair_loss
    if robust == "r3m":
        return lambda d: r3m_loss(d, r3m_lambda)
    if robust == "adaptive":
        return lambda d: adaptive_loss(d, adaptive_rho, adaptive_tau_min, adaptive_tau_max)
    raise ValueError(f"reward.robust: {robust!r} is not one of ['none', 'r3m', 'adaptive']")
