"""Algorithm math against values computed by hand (see the comments for the arithmetic)."""

import math

import pytest
import torch

from rlhf.algo.advantages import gae, group_advantages, masked_whiten, token_rewards
from rlhf.algo.kl import (
    AdaptiveKLController,
    FixedKLController,
    build_kl_controller,
    kl_estimate,
)
from rlhf.algo.losses import (
    aggregate,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    truncated_is_weights,
)

t = torch.tensor


def test_gae_with_padding_mask():
    # gamma=1, lam=0.5; the 4th token is padding, its value 9 must not leak.
    # t2: delta = 1 - .5 = .5 -> A=.5; t1: delta = 0 + .5 - .5 = 0 -> A = .5*.5 = .25; t0: A = .5*.25 = .125
    rewards = t([[0.0, 0.0, 1.0, 0.0]])
    values = t([[0.5, 0.5, 0.5, 9.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert torch.allclose(adv, t([[0.125, 0.25, 0.5, 0.0]]))
    assert torch.allclose(ret, t([[0.625, 0.75, 1.0, 0.0]]))


def test_gae_discounted():
    # t1: delta = 1 - .4 = .6; t0: delta = .9*.4 - .2 = .16, A0 = .16 + .9*.95*.6 = .673
    adv, ret = gae(t([[0.0, 1.0]]), t([[0.2, 0.4]]), t([[1.0, 1.0]]), gamma=0.9, lam=0.95)
    assert torch.allclose(adv, t([[0.673, 0.6]]), atol=1e-6)
    assert torch.allclose(ret, t([[0.873, 1.0]]), atol=1e-6)


def test_gae_lambda_one_gamma_one_is_monte_carlo_minus_value():
    adv, ret = gae(t([[0.1, 0.2, 0.7]]), t([[0.3, 0.3, 0.3]]), t([[1.0, 1.0, 1.0]]), 1.0, 1.0)
    assert torch.allclose(ret, t([[1.0, 0.9, 0.7]]))
    assert torch.allclose(adv, t([[0.7, 0.6, 0.4]]))


def test_group_advantages():
    # group 1: mean .5, unbiased std = sqrt(1/3) = .57735 -> +-.5/.57735 = +-.866025; group 2 all equal -> 0
    scores = t([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(scores, 4)
    expected = t([0.866025, -0.866025, -0.866025, 0.866025, 0, 0, 0, 0])
    assert torch.allclose(adv, expected, atol=1e-5)
    assert torch.isfinite(adv).all()
    assert torch.allclose(group_advantages(scores, 4, scale_by_std=False), t([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="samples_per_prompt"):
        group_advantages(scores, 3)


def test_clipped_policy_loss():
    # ratios 1.5, 0.5, 1.1 with A = 1, -1, 2, eps .2:
    # tok1 max(-1.5, -1.2) = -1.2 (clipped); tok2 max(.5, .8) = .8 (clipped); tok3 max(-2.2, -2.2) = -2.2
    logp = torch.log(t([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    adv = t([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = clipped_policy_loss(logp, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    # a masked-out token changes nothing
    loss2, _ = clipped_policy_loss(torch.cat([logp, t([[5.0]])], 1), torch.zeros(1, 4), torch.cat([adv, t([[9.0]])], 1),
                                   t([[1.0, 1.0, 1.0, 0.0]]), 0.2)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)


def test_policy_loss_is_weights_scale_tokens():
    logp, old, adv, mask = torch.zeros(1, 2), torch.zeros(1, 2), t([[1.0, 1.0]]), torch.ones(1, 2)
    loss, _ = clipped_policy_loss(logp, old, adv, mask, 0.2, is_weights=t([[0.5, 2.0]]))
    assert loss.item() == pytest.approx(-(0.5 + 2.0) / 2)
    w = truncated_is_weights(torch.log(t([[0.9, 0.5]])), torch.log(t([[0.3, 0.5]])), cap=2.0)
    assert torch.allclose(w, t([[2.0, 1.0]]))


def test_clipped_value_loss():
    # tok1: (1-2)^2 = 1 vs V_clip = .5+.2 = .7 -> 1.69; tok2: 0 vs V_clip = .3 -> .09; 0.5 * mean(1.69, .09) = .445
    loss, stats = clipped_value_loss(t([[1.0, 0.0]]), t([[0.5, 0.5]]), t([[2.0, 0.0]]), torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx(0.445, abs=1e-6)
    assert stats["value_clip_frac"].item() == pytest.approx(1.0)
    unclipped, _ = clipped_value_loss(t([[1.0, 0.0]]), t([[0.5, 0.5]]), t([[2.0, 0.0]]), torch.ones(1, 2), 0.0)
    assert unclipped.item() == pytest.approx(0.25)


def test_kl_estimators():
    # log_ratio = ln 2: k1 = .693147, k2 = .5 * ln2^2 = .240227, k3 = .5 - 1 + ln2 = .193147
    logp, ref = torch.log(t([0.5])), torch.log(t([0.25]))
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-6)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2), abs=1e-6)
    # k3 is never negative, k1 can be
    assert kl_estimate(ref, logp, "k1").item() < 0 < kl_estimate(ref, logp, "k3").item()
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_estimate(logp, ref, "k9")


def test_kl_controllers():
    fixed = build_kl_controller("fixed", 0.1, 0.1, 100)
    fixed.update(5.0, 10)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.1
    ada = build_kl_controller("adaptive", 0.1, 0.1, 100)
    ada.update(0.2, 10)  # error clipped to .2 -> 0.1 * (1 + .2 * 10 / 100) = .102
    assert isinstance(ada, AdaptiveKLController) and ada.value == pytest.approx(0.102)
    ada.update(0.05, 10)  # error -.5 clipped to -.2 -> .102 * .98
    assert ada.value == pytest.approx(0.102 * 0.98)
    state = ada.state_dict()
    other = build_kl_controller("adaptive", 1.0, 0.1, 100)
    other.load_state_dict(state)
    assert other.value == ada.value


def test_whitening():
    # mean 2.5, unbiased var 5/3 -> std 1.290994
    x = t([[1.0, 2.0, 3.0, 4.0]])
    out = masked_whiten(x, torch.ones_like(x))
    assert torch.allclose(out, t([[-1.161895, -0.387298, 0.387298, 1.161895]]), atol=1e-5)
    # the padded 100 is ignored: mean 2, var 1
    out = masked_whiten(t([[1.0, 2.0, 3.0, 100.0]]), t([[1.0, 1.0, 1.0, 0.0]]))
    assert torch.allclose(out, t([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-5)
    scaled = masked_whiten(x, torch.ones_like(x), shift_mean=False)
    assert torch.allclose(scaled, t([[-1.161895, -0.387298, 0.387298, 1.161895]]) + 2.5, atol=1e-5)


def test_token_rewards_kl_penalty_and_score_on_last_token():
    r = token_rewards(t([1.0, 2.0]), t([[0.1, 0.2, 0.3, 0.9], [0.1, 0.1, 0.0, 0.0]]),
                      t([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]), 0.5)
    assert torch.allclose(r, t([[-0.05, -0.1, 0.85, 0.0], [1.95, 0.0, 0.0, 0.0]]))


def test_aggregation_modes():
    loss = t([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "token_mean").item() == pytest.approx(2.0)
    assert aggregate(loss, mask, "seq_mean").item() == pytest.approx(2.25)
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate(loss, mask, "sum")


def test_entropy_uniform():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4), abs=1e-6)


def test_gather_logprobs_entropy_matches_entropy_from_logits():
    from rlhf.model.policy import gather_logprobs

    torch.manual_seed(0)
    logits, tokens = torch.randn(2, 3, 7), torch.randint(0, 7, (2, 3))
    lp, ent = gather_logprobs(logits, tokens, with_entropy=True)
    assert torch.allclose(lp, gather_logprobs(logits, tokens))
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-6)
    assert torch.allclose(ent, entropy_from_logits(logits), atol=1e-6)


def two_rank_sum(other_x: torch.Tensor, other_mask: torch.Tensor):
    """A stand-in for an all-reduce over two ranks, seen from rank 0: adds what rank 1 (other_x, other_mask) would
    contribute to each of global_mean_var's two reductions (sums + count, then squared deviations from the mean)."""
    state = {}

    def all_sum(t: torch.Tensor) -> torch.Tensor:
        if t.shape == (2,):
            other = torch.stack([(other_x * other_mask).sum(), other_mask.sum()])
            total = t + other
            state["mean"] = total[0] / total[1]
            return total
        return t + ((other_x - state["mean"]).pow(2) * other_mask).sum().reshape(1)

    return all_sum


def test_global_whitening_equals_whitening_the_concatenated_batch():
    from rlhf.algo.advantages import global_mean_var

    a, ma = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    b, mb = torch.tensor([[5.0, 7.0, 9.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    mean, var = global_mean_var(a, ma, two_rank_sum(b, mb))
    # by hand: values 1, 2, 3, 5, 7, 9 -> mean 27/6 = 4.5; squared deviations 12.25+6.25+2.25+0.25+6.25+20.25 = 47.5
    assert float(mean) == pytest.approx(4.5) and float(var) == pytest.approx(47.5 / 5)
    got = masked_whiten(a, ma, all_sum=two_rank_sum(b, mb))
    both = masked_whiten(torch.cat([a, b[:, :3]]), torch.cat([ma, mb]))
    assert torch.allclose(got, both[:2], atol=1e-6)
    assert not torch.allclose(masked_whiten(a, ma), both[:2], atol=1e-3)  # per-rank statistics differ


def test_micro_weights_global_token_share():
    from rlhf.algo.step import chunk_slices, micro_weights

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # this rank: 3 + 1 tokens; the other rank has 4 + 0
    other = torch.tensor([4.0, 1.0])  # (tokens, non-empty sequences) of the other rank
    all_sum = lambda t: t + other  # noqa: E731
    w, tw = micro_weights(mask, chunk_slices(2, 1), "token_mean", all_sum, world_size=2)
    # global 8 tokens over 2 ranks -> 4 per rank: chunks weigh 3/4 and 1/4 (then the engine averages the 2 ranks)
    assert w == pytest.approx([0.75, 0.25]) and tw == pytest.approx([0.75, 0.25])
    w, _ = micro_weights(mask, chunk_slices(2, 2), "token_mean", all_sum, world_size=2)
    assert w == pytest.approx([1.0])
    w, _ = micro_weights(mask, chunk_slices(2, 1), "seq_mean", all_sum, world_size=2)
    # 3 non-empty sequences over 2 ranks -> 1.5 per rank: each of this rank's two weighs 1/1.5
    assert w == pytest.approx([2 / 3, 2 / 3])


# ------------------------------------------------------------------ regressions found against verl / OpenRLHF / TRL
def test_equal_rewards_give_exactly_zero_advantage():
    # 0.7 is not dyadic: in float32 the group mean of eight 0.7s is not 0.7, and dividing the leftover by a std of
    # ~1e-8 gave +-0.056 per token (up to 0.64 for other values): noise on groups that carry no signal.
    scores = torch.full((8,), 0.7, dtype=torch.float64)
    g32 = scores.float()
    old_way = (g32 - g32.mean()) / (g32.std() + 1e-6)
    assert old_way.abs().max() > 1e-3, "the float32 computation no longer shows the bug; pick another value"
    assert torch.equal(group_advantages(scores, 8), torch.zeros(8))
    # one flat group next to one with signal: only the flat one is zeroed, the other is untouched
    mixed = torch.cat([torch.full((4,), 1.2), t([1.2, 0.2, 0.2, 1.2])])
    adv = group_advantages(mixed, 4)
    assert torch.equal(adv[:4], torch.zeros(4))
    assert torch.allclose(adv[4:], t([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-5)
    assert adv.dtype == torch.float32


def test_grpo_kl_in_reward_shapes_scores_before_group_normalisation():
    from rlhf.algo.step import compute_advantages
    from helpers import algo_cfg

    from rlhf.algo.registry import build_algorithm

    cfg = build_algorithm(algo_cfg("grpo", kl_in="reward", kl_estimator="k1", scale_by_std=False,
                                   whiten_advantages=False))
    scores = t([1.0, 0.0])
    mask = t([[1.0, 1.0], [1.0, 1.0]])
    ref = torch.zeros(2, 2)
    old = t([[0.2, 0.2], [0.0, 0.1]])  # k1 = old - ref: summed KL 0.4 and 0.1
    # kl_coef .5: shaped scores 1 - .2 = .8 and 0 - .05 = -.05; group mean .375 -> advantages +-.425 (vs +-.5 without)
    adv, _, _ = compute_advantages(cfg, scores, mask, old, ref, None, 2, kl_coef=0.5)
    assert torch.allclose(adv, t([[0.425, 0.425], [-0.425, -0.425]]), atol=1e-6)
    adv0, _, _ = compute_advantages(cfg, scores, mask, old, ref, None, 2, kl_coef=0.0)
    assert torch.allclose(adv0, t([[0.5, 0.5], [-0.5, -0.5]]))
    # kl_in=loss leaves the advantages alone (the loss carries the KL)
    loss_cfg = build_algorithm(algo_cfg("grpo", kl_in="loss", kl_estimator="k1", scale_by_std=False,
                                        whiten_advantages=False))
    assert torch.equal(compute_advantages(loss_cfg, scores, mask, old, ref, None, 2, kl_coef=0.5)[0], adv0)


def test_value_clip_frac_ignores_rounding():
    # bf16: old + (V - old) != V by one rounding step although |V - old| = .169 < eps = .2; nothing was clipped
    old = t([[0.1513671875]], dtype=torch.bfloat16)
    v = t([[-0.0179443359375]], dtype=torch.bfloat16)
    ret = t([[-0.083984375]], dtype=torch.bfloat16)
    v_clip = old + (v - old).clamp(-0.2, 0.2)
    assert not torch.equal(v_clip, v) and (v_clip - ret).pow(2) > (v - ret).pow(2), "no rounding case any more"
    _, stats = clipped_value_loss(v, old, ret, torch.ones(1, 1), 0.2)
    assert stats["value_clip_frac"].item() == 0.0
    # a real clip still counts: V moved by .5 > .2 towards the return 1: (.2 - 1)^2 = .64 > (.5 - 1)^2 = .25
    _, stats = clipped_value_loss(t([[0.5]]), t([[0.0]]), t([[1.0]]), torch.ones(1, 1), 0.2)
    assert stats["value_clip_frac"].item() == 1.0


def test_dual_clip_caps_negative_advantage_tokens():
    # ratios 5, 5, 0.5 with A = -1, +1, -2; eps .2, c = 3
    # tok1: max(5, 1.2) = 5 -> capped at -A*c = 3; tok2: max(-5, -1.2) = -1.2 (A > 0: untouched);
    # tok3: max(1, 1.6) = 1.6 < cap 6 -> 1.6
    logp = torch.log(t([[5.0, 5.0, 0.5]]))
    adv = t([[-1.0, 1.0, -2.0]])
    mask = torch.ones(1, 3)
    loss, stats = clipped_policy_loss(logp, torch.zeros(1, 3), adv, mask, 0.2, dual_clip_c=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.2 + 1.6) / 3, abs=1e-6)
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 3)
    plain, _ = clipped_policy_loss(logp, torch.zeros(1, 3), adv, mask, 0.2)
    assert plain.item() == pytest.approx((5.0 - 1.2 + 1.6) / 3, abs=1e-6)
    # the capped token gets no gradient (constant cap), as in verl's dual-clip
    lp = logp.clone().requires_grad_(True)
    clipped_policy_loss(lp, torch.zeros(1, 3), adv, mask, 0.2, dual_clip_c=3.0)[0].backward()
    assert lp.grad[0, 0].item() == 0.0


def test_dr_grpo_constant_normaliser_aggregation():
    # per-token losses [1,2,3] and [4] (3 pads), constant 4: (6/4 + 4/4) / 2 = 1.25 (a per-reply mean would give 1.5)
    loss = t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(loss, mask, "seq_mean_token_sum_norm", 4).item() == pytest.approx(1.25)
    assert aggregate(loss, mask, "seq_mean").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="loss_norm_tokens"):
        aggregate(loss, mask, "seq_mean_token_sum_norm", 0)
