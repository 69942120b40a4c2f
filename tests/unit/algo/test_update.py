"""The shared PPO/GRPO update on a tiny random model: direction of learning, reference handling, skipping NaNs."""

import dataclasses

import pytest
import torch
from helpers import algo_cfg
from helpers import tiny_policy as build_tiny_policy

from rlhf.algo.step import make_experience, update
from rlhf.backend.base import TorchBackend, trainable_params
from rlhf.algo.registry import build_algorithm
from rlhf.rollout.base import SamplingParams
from rlhf.rollout.hf_engine import HFEngine


def rollout_for(policy, tok, n=2):
    torch.manual_seed(0)
    engine = HFEngine(policy.generation_model(), tok, torch.device("cpu"))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is 2 + 2?", "Name a fruit.")]
    return engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, n=n))


def seq_logprob(policy, exp, rows):
    with torch.no_grad():
        out = policy(exp.input_ids[rows], exp.attention_mask[rows], exp.prompt_len, 1.0, want_entropy=False)
    return (out.logprobs * exp.mask[rows]).sum(-1)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_update_raises_logprob_of_rewarded_samples(tiny_policy, algo):
    policy, tok = tiny_policy(value_head=algo == "ppo")
    rollout = rollout_for(policy, tok)
    critic = {"critic_lr": 1e-3} if algo == "ppo" else {}
    cfg = algo_cfg(algo, lr=3e-3, prompts_per_step=2, samples_per_prompt=2, minibatch_size=4,
                   epochs=4, kl_coef=0.0, whiten_advantages=algo == "ppo", **critic)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])  # per group: one good, one bad sample
    exp, metrics = make_experience(policy, rollout, scores, build_algorithm(cfg), 0.0, 1.0, torch.device("cpu"))
    good, bad = torch.tensor([0, 3]), torch.tensor([1, 2])
    before_good, before_bad = seq_logprob(policy, exp, good), seq_logprob(policy, exp, bad)
    stats = update(policy, exp, build_algorithm(cfg), 0.0, 1.0, TorchBackend(policy, cfg))
    assert stats["optimizer_steps"] == 4 and stats["skipped_updates"] == 0
    assert (seq_logprob(policy, exp, good) > before_good).all()
    assert (seq_logprob(policy, exp, bad) < before_bad).all()
    if algo == "ppo":
        assert "value_loss" in stats and metrics["value_mean"] == 0.0  # zero-initialised value head
    assert metrics["kl"] != metrics["kl"]  # kl_coef=0: the reference forward is skipped, KL reported as NaN


def test_lora_reference_is_base_with_adapter_disabled(tiny_policy):
    policy, tok = tiny_policy(lora=True)
    rollout = rollout_for(policy, tok)
    cfg = algo_cfg("grpo", lr=1e-2, prompts_per_step=2, samples_per_prompt=2, minibatch_size=4, epochs=2,
                     kl_coef=0.1, kl_in="loss", kl_estimator="k3", whiten_advantages=False)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    exp, m = make_experience(policy, rollout, scores, build_algorithm(cfg), cfg.kl_coef, 1.0, torch.device("cpu"))
    # LoRA B starts at zero: policy == reference, so the KL is exactly zero before training
    assert torch.allclose(exp.old_logprobs, exp.ref_logprobs, atol=1e-6) and m["kl"] == pytest.approx(0.0, abs=1e-6)
    n_params = sum(p.numel() for p in policy.parameters())
    update(policy, exp, build_algorithm(cfg), cfg.kl_coef, 1.0, TorchBackend(policy, cfg))
    after = make_experience(policy, rollout, scores, build_algorithm(cfg), cfg.kl_coef, 1.0, torch.device("cpu"))[0]
    assert torch.allclose(after.ref_logprobs, exp.ref_logprobs, atol=1e-6)  # reference did not move
    assert not torch.allclose(after.old_logprobs, exp.old_logprobs, atol=1e-4)  # the policy did
    assert sum(p.numel() for p in policy.parameters()) == n_params  # no second copy of the model


def test_non_finite_loss_is_skipped_not_applied(tiny_policy):
    policy, tok = tiny_policy()
    rollout = rollout_for(policy, tok)
    cfg = algo_cfg("grpo", lr=1e-2, prompts_per_step=2, samples_per_prompt=2, minibatch_size=2, epochs=1,
                     kl_coef=0.0, whiten_advantages=False)
    exp, _ = make_experience(policy, rollout, torch.tensor([1.0, 0.0, 0.0, 1.0]), build_algorithm(cfg), 0.0, 1.0, torch.device("cpu"))
    exp = dataclasses.replace(exp, advantages=torch.full_like(exp.advantages, float("nan")))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    stats = update(policy, exp, build_algorithm(cfg), 0.0, 1.0, TorchBackend(policy, cfg))
    assert stats["skipped_updates"] == 2 and stats["optimizer_steps"] == 0
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in before.items())


def test_generation_with_merged_lora_leaves_base_bitwise_unchanged(tiny_policy):
    from rlhf.rollout.hf_engine import merged_adapter

    policy, tok = tiny_policy(lora=True)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, so merging really changes the weights
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    rollout = rollout_for(policy, tok)
    assert all(torch.equal(p, before[n]) for n, p in policy.model.named_parameters())
    # inside the context the merged model computes what base + adapter computes
    ids, att = rollout.input_ids, rollout.attention_mask
    with torch.no_grad():
        unmerged = policy.model(input_ids=ids, attention_mask=att).logits
        with merged_adapter(policy.model):
            merged_weights = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
            merged = policy.model(input_ids=ids, attention_mask=att).logits
    assert any(not torch.equal(merged_weights[n], before[n]) for n in before if n.endswith("base_layer.weight"))
    assert torch.allclose(merged, unmerged, atol=1e-4)


# ------------------------------------------------------------------------------------- gradient accumulation
def accumulation_setup(algo: str, loss_agg: str):
    """A rollout of 8 samples with response lengths 0..8 tokens (masks cut short; one empty response, which seq_mean
    leaves out), every loss term switched on. Also used by tests/ds_accumulation.py, outside pytest: no fixtures."""
    policy, tok = build_tiny_policy(value_head=algo == "ppo")
    rollout = rollout_for(policy, tok, n=4)
    critic = {"critic_lr": 1e-3, "vf_coef": 0.5} if algo == "ppo" else {}
    cfg = algo_cfg(algo, lr=1e-3, prompts_per_step=2, samples_per_prompt=4, minibatch_size=8,
                   epochs=1, kl_coef=0.1, kl_in="loss", kl_estimator="k3", entropy_coef=0.05,
                   max_grad_norm=0.0, whiten_advantages=algo == "ppo", loss_agg=loss_agg, **critic)
    exp, _ = make_experience(policy, rollout, torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 0.3, 0.9]),
                             build_algorithm(cfg), 0.1, 1.0, torch.device("cpu"))
    R = exp.mask.shape[1]
    lengths = torch.tensor([1, 8, 3, 0, 2, 7, 4, 6]).clamp(max=R)
    cut = (torch.arange(R)[None, :] < lengths[:, None]).float()
    exp = dataclasses.replace(exp, mask=exp.mask * cut, advantages=exp.advantages * cut)
    assert len(set(exp.mask.sum(-1).tolist())) > 4, "responses must have unequal lengths"
    return policy, exp, cfg


class RecordingBackend(TorchBackend):
    """A plain backend whose step records the accumulated gradient instead of applying it (weights stay put)."""

    def __init__(self, policy, cfg):
        super().__init__(policy, cfg)
        self.seen = []

    def step(self):
        self.seen.append([p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params])
        self.optimizer.zero_grad(set_to_none=True)
        return 0.0


def grads_per_step(policy, exp, cfg, kl_coef=0.1):
    backend = RecordingBackend(policy, cfg)
    stats = update(policy, exp, build_algorithm(cfg), kl_coef, 1.0, backend, generator=torch.Generator().manual_seed(7))
    return backend.seen, stats


@pytest.mark.parametrize("algo,loss_agg", [("ppo", "token_mean"), ("ppo", "seq_mean"), ("grpo", "token_mean"),
                                           ("grpo", "seq_mean")])
def test_accumulated_micro_batches_give_the_minibatch_gradient(algo, loss_agg):
    policy, exp, cfg = accumulation_setup(algo, loss_agg)
    ref, ref_stats = grads_per_step(policy, exp, cfg)
    for micro in (1, 2, 4):  # equal chunks, but unequal token counts per chunk
        got, stats = grads_per_step(policy, exp, dataclasses.replace(cfg, micro_batch_size=micro))
        assert len(got) == len(ref) == 1 and stats["optimizer_steps"] == 1
        diff = max((a - b).abs().max().item() for a, b in zip(ref[0], got[0]))
        assert diff < 1e-5, (micro, diff)
        assert max(g.abs().max().item() for g in got[0]) > 1e-3, "the gradient must not be trivially zero"
        assert stats.keys() == ref_stats.keys()
        for k, v in ref_stats.items():
            assert stats[k] == pytest.approx(v, abs=1e-5), (micro, k)
    assert {"policy_loss", "kl_loss", "entropy", "clip_frac", "approx_kl", "loss"} <= ref_stats.keys()
    assert algo == "grpo" or "value_loss" in ref_stats


def test_micro_batches_accumulate_over_several_minibatches():
    policy, exp, cfg = accumulation_setup("ppo", "token_mean")
    cfg = dataclasses.replace(cfg, minibatch_size=4, epochs=2)
    ref, ref_stats = grads_per_step(policy, exp, cfg)
    got, stats = grads_per_step(policy, exp, dataclasses.replace(cfg, micro_batch_size=2))
    assert len(ref) == len(got) == 4
    assert max((a - b).abs().max().item() for r, g in zip(ref, got) for a, b in zip(r, g)) < 1e-5
    assert all(stats[k] == pytest.approx(v, abs=1e-5) for k, v in ref_stats.items())


def test_non_finite_micro_batch_skips_its_whole_minibatch():
    """A NaN in the second micro-batch drops the first one's accumulated gradient: the minibatch is skipped and the
    next minibatch's gradient is exactly what it would be without the NaN sample."""
    policy, exp, cfg = accumulation_setup("grpo", "token_mean")
    cfg = dataclasses.replace(cfg, minibatch_size=4, micro_batch_size=2)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))  # the order update() draws
    bad = int(perm[3])  # first minibatch, second micro-batch
    clean, _ = grads_per_step(policy, exp, cfg)
    adv = exp.advantages.clone()
    adv[bad] = float("nan")
    got, stats = grads_per_step(policy, dataclasses.replace(exp, advantages=adv), cfg)
    assert stats["skipped_updates"] == 1 and stats["optimizer_steps"] == 1 and len(got) == 1
    assert all(torch.equal(a, b) for a, b in zip(clean[1], got[0]))
    # with a real optimizer: the skipped minibatch changes nothing
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    exp_all_bad = dataclasses.replace(exp, advantages=adv)
    all_bad_cfg = dataclasses.replace(cfg, minibatch_size=8, micro_batch_size=2)
    stats = update(policy, exp_all_bad, build_algorithm(all_bad_cfg), 0.1, 1.0, TorchBackend(policy, all_bad_cfg),
                   generator=torch.Generator().manual_seed(7))
    assert stats["skipped_updates"] == 1 and stats["optimizer_steps"] == 0
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in trainable_params(policy))


def test_experience_forwards_in_micro_batches(tiny_policy, monkeypatch):
    policy, tok = tiny_policy(value_head=True)
    rollout = rollout_for(policy, tok, n=4)
    cfg = algo_cfg("ppo", prompts_per_step=2, samples_per_prompt=4, minibatch_size=8, kl_coef=0.1)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.0, 1.0, 0.3, 0.9])
    ref, _ = make_experience(policy, rollout, scores, build_algorithm(cfg), 0.1, 1.0, torch.device("cpu"))
    sizes, forward = [], policy.forward

    def spy(ids, *args, **kwargs):
        sizes.append(ids.shape[0])
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(policy, "forward", spy)
    got, _ = make_experience(policy, rollout, scores, build_algorithm(dataclasses.replace(cfg, micro_batch_size=2)), 0.1, 1.0,
                             torch.device("cpu"))
    assert sizes == [2, 2, 2, 2]
    for name in ("old_logprobs", "ref_logprobs", "old_values", "advantages", "returns"):
        assert torch.allclose(getattr(ref, name), getattr(got, name), atol=1e-5), name


@pytest.mark.parametrize("minibatch,epochs", [(4, 1), (2, 2)])
def test_deferred_old_logprobs_give_the_same_update(tiny_policy, minibatch, epochs):
    """Leaving the old log-probs to the update (the first minibatch's own forward, the other rows before the first
    optimizer step) changes nothing: the same weights after the update, the same old log-probs and KL metrics."""
    cfg = algo_cfg("grpo", lr=1e-2, prompts_per_step=2, samples_per_prompt=2, minibatch_size=minibatch, epochs=epochs,
                   kl_coef=0.1, kl_in="loss", kl_estimator="k3", whiten_advantages=False)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    results = []
    for defer in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation for both
        policy, tok = tiny_policy(lora=True)
        with torch.no_grad():  # a non-zero adapter, so that the policy differs from the reference
            for n, p in policy.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        rollout = rollout_for(policy, tok)
        exp, metrics = make_experience(policy, rollout, scores, build_algorithm(cfg), cfg.kl_coef, 1.0,
                                       torch.device("cpu"), defer_old=defer)
        assert (exp.old_logprobs is None) == defer
        stats = update(policy, exp, build_algorithm(cfg), cfg.kl_coef, 1.0, TorchBackend(policy, cfg),
                       generator=torch.Generator().manual_seed(0))
        results.append((exp, {**metrics, **exp.late_metrics}, stats,
                        {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}))
    (e0, m0, s0, w0), (e1, m1, s1, w1) = results
    assert torch.allclose(e0.old_logprobs, e1.old_logprobs, atol=1e-5)
    assert m0["kl"] == pytest.approx(m1["kl"], abs=1e-5) and m0["kl"] > 0
    assert s1["optimizer_steps"] == s0["optimizer_steps"] == epochs * 4 // minibatch
    for n in w0:
        assert torch.allclose(w0[n], w1[n], atol=1e-5), n


def test_old_logprobs_are_not_deferred_when_the_advantages_need_them(tiny_policy):
    from rlhf.algo.step import can_defer_old_logprobs
    grpo = algo_cfg("grpo", kl_coef=0.1, kl_in="loss")
    assert can_defer_old_logprobs(grpo, 0.1, has_values=False)
    assert not can_defer_old_logprobs(grpo, 0.1, has_values=True)  # PPO's values come from that forward
    assert not can_defer_old_logprobs(algo_cfg("rloo", kl_coef=0.1, kl_in="reward"), 0.1, has_values=False)
    assert can_defer_old_logprobs(algo_cfg("rloo", kl_coef=0.0, kl_in="reward"), 0.0, has_values=False)
    assert not can_defer_old_logprobs(algo_cfg("ppo", kl_controller="adaptive", kl_coef=0.1), 0.1, has_values=False)
