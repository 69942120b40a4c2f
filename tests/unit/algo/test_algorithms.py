"""The algorithm family: each estimator and loss against hand-computed values, the registry, the per-algorithm
schemas, and one update per algorithm on a tiny random policy (the direction of learning)."""

import math
from pathlib import Path

import pytest
import torch
from helpers import ROOT, algo_cfg
from helpers import tiny_policy as build_tiny_policy
from test_update import rollout_for

from rlhf.algo.cispo import cispo_policy_loss
from rlhf.algo.dapo import overlong_penalty
from rlhf.algo.gspo import gspo_policy_loss
from rlhf.algo.losses import clipped_policy_loss
from rlhf.algo.online_dpo import best_vs_worst_pairs, dpo_loss
from rlhf.algo.registry import algorithm_names, build_algorithm, load_algorithms
from rlhf.algo.reinforce_pp import discounted_returns
from rlhf.algo.rloo import leave_one_out_advantages
from rlhf.backend.base import TorchBackend

t = torch.tensor
ALL = ["cispo", "dapo", "dr_grpo", "grpo", "gspo", "online_dpo", "ppo", "reinforce_pp", "rloo"]


# ------------------------------------------------------------------------------------------------------------ registry
def test_every_algorithm_is_one_module_and_one_yaml():
    assert algorithm_names() == ALL
    yamls = sorted(p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml"))
    assert yamls == ALL
    for name, cls in load_algorithms().items():
        text = (ROOT / "conf" / "algo" / f"{name}.yaml").read_text()
        assert f"- {name}_schema" in text, name  # the YAML extends its own schema
        assert Path(__import__(cls.__module__, fromlist=["x"]).__file__).stem == name
        assert cls.schema().name == name


def test_schema_of_another_algorithm_is_refused():
    from rlhf.algo.ppo import PPOConfig

    with pytest.raises(TypeError, match="GRPOConfig"):
        build_algorithm(PPOConfig(name="grpo"))
    assert "clip_high" not in {f for f in algo_cfg("grpo").__dataclass_fields__}
    assert "critic_lr" not in {f for f in algo_cfg("rloo").__dataclass_fields__}


@pytest.mark.parametrize("name,kw,key", [
    ("grpo", {"samples_per_prompt": 1, "prompts_per_step": 8}, "algo.samples_per_prompt"),
    ("rloo", {"samples_per_prompt": 1, "prompts_per_step": 16}, "algo.samples_per_prompt"),
    ("dapo", {"clip_high": -0.1}, "algo.clip_high"),
    ("dapo", {"dual_clip_c": 0.5}, "algo.dual_clip_c"),
    ("cispo", {"clip_low": 1.5}, "algo.clip_low"),
    ("gspo", {"loss_agg": "sum"}, "algo.loss_agg"),
    ("reinforce_pp", {"whiten_advantages": True}, "algo.whiten_advantages"),
    ("online_dpo", {"pairs_per_prompt": 3}, "algo.samples_per_prompt"),
    ("online_dpo", {"minibatch_size": 3}, "algo.minibatch_size"),
    ("online_dpo", {"beta": 0.0}, "algo.beta"),
    ("ppo", {"gamma": 1.5}, "algo.gamma"),
])
def test_schema_checks_name_the_key(name, kw, key):
    errors = algo_cfg(name, **kw).errors()
    assert any(e.startswith(key + ":") for e in errors), errors


# ------------------------------------------------------------------------------------------------------ estimators
def test_leave_one_out_advantages_by_hand():
    # groups of 2: each sample against the other one
    assert torch.equal(leave_one_out_advantages(t([1.0, 0.0, 0.0, 1.0]), 2), t([1.0, -1.0, -1.0, 1.0]))
    # group of 3: 3 - mean(0, 0) = 3; 0 - mean(3, 0) = -1.5
    assert torch.allclose(leave_one_out_advantages(t([3.0, 0.0, 0.0]), 3), t([3.0, -1.5, -1.5]))
    # all equal: exactly 0 (float64 inside), also for non-dyadic values
    assert torch.equal(leave_one_out_advantages(t([1.2, 1.2, 1.2]), 3), torch.zeros(3))
    with pytest.raises(ValueError, match="algo.samples_per_prompt"):
        leave_one_out_advantages(t([1.0, 0.0]), 1)


def test_discounted_returns_by_hand():
    rewards = t([[0.0, 0.0, 1.0, 5.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # padding's 5 must not leak
    assert torch.equal(discounted_returns(rewards, mask, 1.0), t([[1.0, 1.0, 1.0, 0.0], [0.5, 0, 0, 0], [0.0] * 4]))
    assert torch.allclose(discounted_returns(rewards, mask, 0.5), t([[0.25, 0.5, 1.0, 0.0], [0.5, 0, 0, 0], [0.0] * 4]))


def test_reinforce_pp_advantages_are_kl_shaped_returns_whitened_over_the_batch():
    algo = build_algorithm(algo_cfg("reinforce_pp", prompts_per_step=2, samples_per_prompt=1, minibatch_size=2,
                                    kl_coef=0.5))
    mask = t([[1.0, 1.0], [1.0, 0.0]])
    kl = t([[0.2, 0.4], [0.0, 0.0]])
    adv, returns = algo.advantages(t([1.0, 0.0]), mask, kl, None, 1, 0.5, None)
    # token rewards: row 0 [-0.1, -0.2 + 1] -> returns [0.7, 0.8]; row 1 [0] -> [0]; whitened over the 3 real tokens
    raw = t([0.7, 0.8, 0.0])
    want = (raw - raw.mean()) / (raw.var() + 1e-8).sqrt()
    assert returns is None
    assert torch.allclose(adv[mask.bool()], want, atol=1e-5) and adv[1, 1] == 0


def test_group_estimator_is_shared_by_the_group_family():
    scores, mask = t([1.0, 0.0, 0.5, 0.5]), torch.ones(4, 3)
    for name in ("grpo", "dapo", "gspo", "cispo"):
        adv, _ = build_algorithm(algo_cfg(name, kl_coef=0.0)).advantages(scores, mask, torch.zeros(4, 3), None, 2,
                                                                          0.0, None)
        # group 1: (1 - .5) / std([1, 0]) = .5 / .7071; group 2 flat: 0
        assert torch.allclose(adv[:, 0], t([0.7071, -0.7071, 0.0, 0.0]), atol=1e-4), name
    adv, _ = build_algorithm(algo_cfg("dr_grpo")).advantages(scores, mask, torch.zeros(4, 3), None, 2, 0.0, None)
    assert torch.allclose(adv[:, 0], t([0.5, -0.5, 0.0, 0.0]))  # no std scaling


# ------------------------------------------------------------------------------------------------------------ losses
def test_clip_higher_moves_only_the_upper_bound():
    logp, old, mask = t([[math.log(1.25)]]), t([[0.0]]), t([[1.0]])
    sym, _ = clipped_policy_loss(logp, old, t([[1.0]]), mask, 0.2)
    dapo, _ = clipped_policy_loss(logp, old, t([[1.0]]), mask, 0.2, clip_high=0.28)
    assert sym.item() == pytest.approx(-1.2) and dapo.item() == pytest.approx(-1.25)
    # the lower bound is still 1 - clip_eps: ratio 0.7 with A < 0 -> max(0.7, 0.8) = 0.8
    low, _ = clipped_policy_loss(t([[math.log(0.7)]]), old, t([[-1.0]]), mask, 0.2, clip_high=0.28)
    assert low.item() == pytest.approx(0.8)


def test_gspo_uses_one_length_normalised_ratio_per_sequence():
    # token log-ratios ln 2 and 0 -> sequence ratio 2 ** (1/2) = 1.4142 for both tokens
    logp = t([[math.log(2.0), 0.0]], requires_grad=True)
    old, mask = t([[0.0, 0.0]]), t([[1.0, 1.0]])
    loss, stats = gspo_policy_loss(logp, old, t([[1.0, 1.0]]), mask, 3e-4, 4e-4)
    assert loss.item() == pytest.approx(-1.0004)  # A > 0 and s above 1 + clip_high: clipped, no gradient
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2)) and stats["clip_frac"].item() == 1.0
    assert stats["seq_ratio_mean"].item() == pytest.approx(math.sqrt(2), rel=1e-5)
    logp.grad = None
    loss, _ = gspo_policy_loss(logp, old, t([[-1.0, -1.0]]), mask, 3e-4, 4e-4)  # A < 0: unclipped branch
    assert loss.item() == pytest.approx(math.sqrt(2), rel=1e-5)
    loss.backward()
    # d/dlogp_t of -A * s_i,t = s (the token-level form), mean over 2 tokens: s / 2 each
    assert torch.allclose(logp.grad, torch.full((1, 2), math.sqrt(2) / 2))


def test_gspo_padding_does_not_change_the_sequence_ratio():
    logp, old = t([[math.log(2.0), 0.0, 7.0]]), t([[0.0, 0.0, 0.0]])
    a, _ = gspo_policy_loss(logp, old, -torch.ones(1, 3), t([[1.0, 1.0, 0.0]]), 0.1, 0.1)
    b, _ = gspo_policy_loss(logp[:, :2], old[:, :2], -torch.ones(1, 2), t([[1.0, 1.0]]), 0.1, 0.1)
    assert a.item() == pytest.approx(b.item())


def test_cispo_keeps_the_gradient_of_clipped_tokens_with_a_capped_weight():
    logp = t([[math.log(2.0), math.log(0.5)]], requires_grad=True)
    old, mask, adv = t([[0.0, 0.0]]), t([[1.0, 1.0]]), t([[1.0, 1.0]])
    loss, stats = cispo_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.5)
    # weights: clip(2, .8, 1.5) = 1.5 and clip(.5, .8, 1.5) = .8, detached; loss = -mean(w * A * logp)
    assert loss.item() == pytest.approx(-(1.5 * math.log(2.0) + 0.8 * math.log(0.5)) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, t([[-0.75, -0.4]]))  # every token has a gradient, PPO's clip would zero both
    assert stats["clip_frac"].item() == 1.0


def test_overlong_penalty_by_hand():
    got = overlong_penalty(t([40, 48, 56, 64]), max_len=64, buffer=16, factor=1.0)
    assert torch.allclose(got, t([0.0, 0.0, -0.5, -1.0]))
    assert torch.equal(overlong_penalty(t([64]), 64, 0, 1.0), t([0.0]))


def test_best_vs_worst_pairs_skip_ties():
    scores = t([0.2, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    chosen, rejected, w = best_vs_worst_pairs(scores, 4, 1)
    assert chosen.tolist() == [1, 4] and rejected.tolist() == [0, 7] and w.tolist() == [1.0, 0.0]
    chosen, rejected, w = best_vs_worst_pairs(scores, 4, 2)
    # group 1 ranked (stable): rows 1, 2, 3, 0 -> pairs (1, 0) and (2, 3); the second is a tie
    assert chosen.tolist()[:2] == [1, 2] and rejected.tolist()[:2] == [0, 3] and w.tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="algo.pairs_per_prompt"):
        best_vs_worst_pairs(scores, 4, 3)


def test_dpo_loss_by_hand():
    # margin = .1 * ((-1 + 1.5) - (-2 + 1.5)) = .1; loss = log(1 + e^-.1)
    loss, margin = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=0.1)
    assert margin.item() == pytest.approx(0.1) and loss.item() == pytest.approx(math.log1p(math.exp(-0.1)))
    smoothed, _ = dpo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), beta=0.1, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(0.8 * math.log1p(math.exp(-0.1)) + 0.2 * math.log1p(math.exp(0.1)))


# ------------------------------------------------------------------------------- one update per algorithm, tiny model
def seq_logprob(policy, rollout, rows):
    with torch.no_grad():
        out = policy(rollout.input_ids[rows], rollout.attention_mask[rows], rollout.prompt_len, 1.0,
                     want_entropy=False)
    return (out.logprobs * rollout.response_mask[rows]).sum(-1)


@pytest.mark.parametrize("name", ALL)
def test_one_update_raises_the_rewarded_replies(name):
    """Per group of 4 the rewards are 1, 0, 0, 1: after a few updates the rewarded replies are more likely and the
    others less (online DPO: best vs worst pairs, so only the paired rows are compared)."""
    extra = {"critic_lr": 1e-3} if name == "ppo" else {}
    if name == "gspo":
        extra = {"clip_low": 0.2, "clip_high": 0.2}  # the paper's tiny ranges would clip after the first step
    if name == "online_dpo":
        extra = {"beta": 0.5, "minibatch_size": 2}
    if name == "dapo":
        extra = {"overlong_buffer": 0}
    if name == "dr_grpo":
        extra = {"loss_norm_tokens": 8}  # the generation budget (to_config fills it in a run)
    if name != "online_dpo":
        extra["kl_coef"] = 0.0
    cfg = algo_cfg(name, lr=3e-3, prompts_per_step=2, samples_per_prompt=4, epochs=4,
                   **({"minibatch_size": 8} if name != "online_dpo" else {}), **extra)
    algo = build_algorithm(cfg)
    policy, tok = build_tiny_policy(value_head=algo.needs_critic)
    rollout = rollout_for(policy, tok, n=4)
    scores = t([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    good, bad = t([0, 3, 5, 6]), t([1, 2, 4, 7])
    if name == "online_dpo":  # stable ranking: best = first 1, worst = last 0 of each group
        good, bad = t([0, 5]), t([2, 7])
    before_good, before_bad = seq_logprob(policy, rollout, good), seq_logprob(policy, rollout, bad)
    exp, metrics = algo.make_experience(policy, rollout, scores, 0.0, 1.0, torch.device("cpu"))
    stats = algo.update(policy, exp, 0.0, 1.0, TorchBackend(policy, cfg))
    assert stats["optimizer_steps"] >= 1 and stats["skipped_updates"] == 0
    assert (seq_logprob(policy, rollout, good) > before_good).all(), name
    assert (seq_logprob(policy, rollout, bad) < before_bad).all(), name
    if name == "online_dpo":
        assert metrics["pair_count"] == 2 and stats["reward_margin"] > 0 and 0 <= stats["reward_accuracy"] <= 1


def test_online_dpo_with_only_ties_takes_no_step_and_no_error():
    cfg = algo_cfg("online_dpo", prompts_per_step=2, samples_per_prompt=2, minibatch_size=2)
    algo = build_algorithm(cfg)
    policy, tok = build_tiny_policy()
    rollout = rollout_for(policy, tok, n=2)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    exp, metrics = algo.make_experience(policy, rollout, torch.ones(4), 0.0, 1.0, torch.device("cpu"))
    stats = algo.update(policy, exp, 0.0, 1.0, TorchBackend(policy, cfg))
    assert metrics["pair_count"] == 0 and metrics["tied_pair_frac"] == 1.0
    assert stats["optimizer_steps"] == 0 and stats["skipped_updates"] == 0 and stats["empty_minibatches"] == 1
    assert all(torch.equal(v, before[k]) for k, v in policy.model.state_dict().items())


def test_online_dpo_reference_refresh_copies_the_policy():
    algo = build_algorithm(algo_cfg("online_dpo", ref_refresh_steps=2))
    policy, _ = build_tiny_policy()
    with torch.no_grad():
        next(policy.model.parameters()).add_(1.0)
    assert algo.after_update(policy, 1) == {}
    assert not all(torch.equal(a, b) for a, b in zip(policy.model.parameters(), policy.ref_model.parameters()))
    assert algo.after_update(policy, 2) == {"ref_refreshed": 1.0}
    assert all(torch.equal(a, b) for a, b in zip(policy.model.parameters(), policy.ref_model.parameters()))
    with pytest.raises(ValueError, match="resume"):
        algo.on_resume(policy, 3)


class RecordingHooks:
    """UpdateHooks that record what would be backpropagated (no optimizer)."""

    def __init__(self, all_sum=None, world_size=1):
        self.all_sum, self.world_size, self.losses = all_sum, world_size, []

    def backward(self, loss, accumulate, is_last):
        self.losses.append(float(loss))

    def discard(self, loss):
        self.losses.clear()

    def step(self):
        return 0.0

    def all_finite(self, t):
        return bool(torch.isfinite(t).all())


def test_online_dpo_loss_is_the_global_mean_under_data_parallelism():
    """Two ranks holding the same pairs (all_sum doubles): after the backend averages the ranks' gradients, the step
    must equal the single process's, so each rank backpropagates the single process's loss."""
    cfg = algo_cfg("online_dpo", prompts_per_step=2, samples_per_prompt=4, minibatch_size=2, micro_batch_size=1)
    algo = build_algorithm(cfg)
    policy, tok = build_tiny_policy()
    rollout = rollout_for(policy, tok, n=4)
    scores = t([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    exp, _ = algo.make_experience(policy, rollout, scores, 0.0, 1.0, torch.device("cpu"))
    single, pair = RecordingHooks(), RecordingHooks(all_sum=lambda x: 2 * x, world_size=2)
    s1 = algo.update(policy, exp, 0.0, 1.0, single, generator=torch.Generator().manual_seed(0))
    s2 = algo.update(policy, exp, 0.0, 1.0, pair, generator=torch.Generator().manual_seed(0))
    assert len(single.losses) == 2 and single.losses == pytest.approx(pair.losses)
    assert s2["dpo_loss"] == pytest.approx(s1["dpo_loss"])  # the logged loss is the global mean too
