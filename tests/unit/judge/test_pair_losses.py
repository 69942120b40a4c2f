"""Robust preference losses (rlhf/judge/pair_losses.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.judge.pair_losses import (
    adaptive_loss,
    adaptive_objective,
    adaptive_tau,
    bt_pair_loss,
    pair_loss_fn,
    r3m_delta,
    r3m_loss,
)


def test_bt_pair_loss_hand_computed():
    # softplus(0) = log 2; softplus(-log 3) = log(4/3)
    d = torch.tensor([0.0, math.log(3.0)])
    assert bt_pair_loss(d)["loss"].item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)


def test_r3m_delta_closed_form_and_loss_values():
    lam = 0.2  # threshold log((1 - 0.2) / 0.2) = log 4 = 1.386294
    d = torch.tensor([2.0, 0.0, -1.0])
    assert r3m_delta(d, lam).tolist() == pytest.approx([0.0, math.log(4), math.log(4) + 1.0], abs=1e-6)
    # pair 1: softplus(-2) = 0.126928; pairs 2, 3: softplus(-log 4) = log 1.25 = 0.223144 plus 0.2 * delta
    per_pair = [0.126928, 0.223144 + 0.2 * math.log(4), 0.223144 + 0.2 * (math.log(4) + 1)]
    out = r3m_loss(d, lam)
    assert out["loss"].item() == pytest.approx(sum(per_pair) / 3, abs=1e-5)
    assert out["outlier_fraction"].item() == pytest.approx(2 / 3)


def test_r3m_caps_the_gradient_of_outlier_pairs_at_lambda():
    d = torch.tensor([2.0, 0.0, -1.0, -8.0], requires_grad=True)
    r3m_loss(d, 0.2)["loss"].backward()
    # a ranked pair keeps BT's gradient -sigmoid(-2) = -0.119203; every pair below log 4 gets exactly -lam
    assert (d.grad * 4).tolist() == pytest.approx([-0.119203, -0.2, -0.2, -0.2], abs=1e-5)
    bt = torch.tensor([-8.0], requires_grad=True)
    bt_pair_loss(bt)["loss"].backward()
    assert bt.grad.item() == pytest.approx(-0.999665, abs=1e-5)  # plain BT: a flipped pair pulls at full strength


def test_r3m_delta_minimises_the_penalised_loss():
    d = torch.linspace(-4, 4, 17)
    lam = 0.3
    best = r3m_delta(d, lam)
    grid = torch.linspace(0, 10, 20001)
    for di, bi in zip(d, best):
        obj = torch.nn.functional.softplus(-(di + grid)) + lam * grid
        assert bi.item() == pytest.approx(grid[obj.argmin()].item(), abs=1e-3)


def test_adaptive_tau_is_the_minimiser_on_a_grid():
    rho, lo, hi = 0.1, 0.1, 4.0
    d = torch.tensor([-6.0, -2.0, -0.5, 0.0, 0.3, 1.0, 2.0, 6.0])
    tau = adaptive_tau(d, rho, lo, hi)
    grid = torch.linspace(lo, hi, 39001)
    for di, ti in zip(d, tau):
        obj = adaptive_objective(di.expand_as(grid), grid, rho)
        assert ti.item() == pytest.approx(grid[obj.argmin()].item(), abs=2e-3)


def test_adaptive_tau_edges_and_symmetry():
    # d = 0: slope rho > 0 everywhere -> tau_min; |d| huge: slope -> rho - log 2 < 0 -> tau_max
    tau = adaptive_tau(torch.tensor([0.0, 100.0, -100.0]), 0.1, 0.1, 4.0)
    assert tau.tolist() == pytest.approx([0.1, 4.0, 4.0], abs=1e-6)
    # the slope in u = d / tau is even: a pair and its flip get the same scale
    d = torch.tensor([0.7, 1.9, 3.3])
    assert adaptive_tau(d, 0.2, 0.1, 4.0).tolist() == pytest.approx(adaptive_tau(-d, 0.2, 0.1, 4.0).tolist())
    # interior optimum: softplus(-u) + u sigmoid(-u) = log 2 - rho at u = d / tau
    t = adaptive_tau(torch.tensor([2.0]), 0.1, 0.1, 4.0).item()
    u = 2.0 / t
    assert math.log1p(math.exp(-u)) + u / (1 + math.exp(u)) == pytest.approx(math.log(2) - 0.1, abs=1e-5)


def test_adaptive_with_tau_fixed_at_one_is_bt_up_to_a_constant():
    d = torch.tensor([-1.5, 0.2, 2.5], requires_grad=True)
    out = adaptive_loss(d, 0.1, 1.0, 1.0)
    assert out["loss"].item() == pytest.approx(bt_pair_loss(d)["loss"].item() + 0.1 - math.log(2), abs=1e-6)
    out["loss"].backward()
    d2 = d.detach().clone().requires_grad_(True)
    bt_pair_loss(d2)["loss"].backward()
    assert d.grad.tolist() == pytest.approx(d2.grad.tolist(), abs=1e-6)


def test_adaptive_gradient_at_the_optimal_tau():
    # envelope theorem: the gradient in d is -sigmoid(-d / tau*) with tau* held fixed
    d = torch.tensor([3.0, -3.0], requires_grad=True)
    out = adaptive_loss(d, 0.1, 0.1, 4.0)
    out["loss"].backward()
    tau = out["tau"]
    assert d.grad.tolist() == pytest.approx((-torch.sigmoid(-d.detach() / tau) / 2).tolist(), abs=1e-6)
    # a misranked pair pulls harder than a ranked one, but less than BT's sigmoid(3) = 0.9526
    assert 0.2 / 2 < -d.grad[1].item() < 0.9526 / 2
    assert -d.grad[0].item() < -d.grad[1].item()


def test_pair_loss_fn_dispatch_and_unknown_name():
    d = torch.tensor([0.5])
    assert pair_loss_fn("none")(d)["loss"].item() == pytest.approx(bt_pair_loss(d)["loss"].item())
    assert "delta" in pair_loss_fn("r3m", r3m_lambda=0.3)(d)
    assert "tau" in pair_loss_fn("adaptive")(d)
    with pytest.raises(ValueError, match="reward.robust"):
        pair_loss_fn("huber")


def _clean_accuracy(robust: str, noise: float, seed: int, dim: int = 20, n_train: int = 200, steps: int = 300) -> float:
    """A linear reward r(x) = w.x trained on feature differences of n_train pairs, a seeded fraction of them with
    chosen and rejected swapped; accuracy on 2000 clean held-out pairs."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(dim, generator=g)

    def pairs(m: int) -> torch.Tensor:
        x = torch.randn(m, dim, generator=g)  # phi(chosen) - phi(rejected), oriented so chosen is truly better
        return x * torch.sign(x @ w_true)[:, None]

    train, test = pairs(n_train), pairs(2000)
    flipped = torch.rand(n_train, generator=g) < noise
    train = torch.where(flipped[:, None], -train, train)
    w = torch.zeros(dim, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    loss_fn = pair_loss_fn(robust)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(train @ w)["loss"].backward()
        opt.step()
    return float(((test @ w) > 0).float().mean())


@pytest.mark.parametrize("noise", [0.1, 0.2, 0.3])
def test_r3m_beats_plain_bt_on_clean_pairs_under_flipped_labels(noise):
    """The claim R3M makes, in a setting small enough to check exactly: with 10/20/30 % of the training labels flipped,
    a linear reward trained to convergence ranks clean held-out pairs better with R3M than with plain BT (mean of 3
    seeds; measured +2.2, +2.2, +1.0 points). Adaptive scaling makes no such claim (its pairs' scales target how strong
    a preference is, not whether its label is wrong) and measured within 1 point of BT here, so it is not asserted."""
    bt = sum(_clean_accuracy("none", noise, s) for s in range(3)) / 3
    r3m = sum(_clean_accuracy("r3m", noise, s) for s in range(3)) / 3
    assert r3m > bt + 0.005, (noise, bt, r3m)
