"""Uncertainty routing (rlhf/judge/routing.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.judge.routing import (
    budget_count,
    group_pairs,
    pair_accuracy_of,
    pair_probs,
    route_mask,
    routed_accuracy,
    uncertainty,
    win_rates,
)


def test_group_pairs_stay_inside_groups():
    assert group_pairs(6, 3).tolist() == [[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [4, 5]]
    with pytest.raises(ValueError, match="groups of >= 2"):
        group_pairs(4, 1)


def test_pair_probs_mean_and_spread_over_members():
    scores = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # member 0: P(0 > 1) = 1/4; member 1: 1/2
    p, spread = pair_probs(scores, torch.tensor([[0, 1]]))
    assert p.item() == pytest.approx(0.375) and spread.item() == pytest.approx(0.125)


def test_uncertainty_rules():
    p, spread = torch.tensor([0.5, 0.9, 0.2]), torch.tensor([0.0, 0.3, 0.1])
    assert uncertainty(p, spread, "margin").tolist() == pytest.approx([0.5, 0.1, 0.2])
    assert uncertainty(p, spread, "ensemble").tolist() == pytest.approx([0.0, 0.3, 0.1])
    with pytest.raises(ValueError, match="reward.route_by"):
        uncertainty(p, spread, "random")


def test_budget_and_masks():
    assert [budget_count(n, 0.25) for n in (0, 1, 2, 4, 10)] == [0, 0, 1, 1, 3]
    assert budget_count(5, 1.0) == 5
    unc = torch.tensor([0.1, 0.4, 0.4, 0.3])
    assert route_mask(unc, 4, 0.5).tolist() == [False, True, True, False]
    assert route_mask(unc, 4, 0.25).tolist() == [False, True, False, False]  # tie: lower index first
    rnd = route_mask(None, 10, 0.3, torch.Generator().manual_seed(0))
    assert int(rnd.sum()) == 3


def test_win_rates_hand_computed():
    pairs = group_pairs(3, 3)  # (0,1), (0,2), (1,2)
    p = torch.tensor([0.8, 0.6, 0.3])
    # reply 0: (0.8 + 0.6) / 2; reply 1: (0.2 + 0.3) / 2; reply 2: (0.4 + 0.7) / 2
    assert win_rates(p, pairs, 3).tolist() == pytest.approx([0.7, 0.25, 0.55])
    assert win_rates(torch.tensor([0.9]), torch.tensor([[0, 1]]), 3).tolist()[2] == 0.5  # in no pair


def test_routed_accuracy_uncertainty_beats_random_when_the_rm_errs_where_unsure():
    rm_p = torch.tensor([0.95, 0.9, 0.45, 0.48, 0.92, 0.4])  # wrong exactly on its three most uncertain pairs
    judge_p = torch.ones(6) * 0.8  # the judge gets every pair right
    assert pair_accuracy_of(rm_p) == pytest.approx(0.5) and pair_accuracy_of(torch.tensor([0.5])) == 0.5
    acc = routed_accuracy(rm_p, judge_p, [0.0, 0.5, 1.0],
                          {"margin": uncertainty(rm_p, rm_p * 0, "margin"), "random": None}, random_draws=200)
    assert acc["margin"] == pytest.approx([0.5, 1.0, 1.0])
    assert acc["random"][0] == 0.5 and acc["random"][2] == 1.0
    assert 0.6 < acc["random"][1] < 0.9  # on average half the wrong pairs are fixed
