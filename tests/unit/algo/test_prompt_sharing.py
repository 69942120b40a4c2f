"""model.share_prompts: each distinct prompt of a batch runs once and its samples' replies on its cached keys/values.
Log-probs, entropy, values and gradients must equal the one-pass forward (to float rounding), with LoRA, with a full
fine-tune and its reference copy, with left-padded prompts of different lengths and rows in any order."""

from __future__ import annotations

import pytest
import torch

from rlhf.model.policy import shared_prompts


def batch(vocab: int, prompt_len: int = 7, reply_len: int = 5):
    """Rows 0, 2, 3 share prompt A; rows 1, 4 prompt B (two tokens of left padding); row 5 has prompt C alone."""
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, vocab, (3, prompt_len), generator=gen)
    mask_p = torch.ones(3, prompt_len, dtype=torch.long)
    prompts[1, :2] = 0
    mask_p[1, :2] = 0
    which = torch.tensor([0, 1, 0, 0, 1, 2])
    replies = torch.randint(3, vocab, (len(which), reply_len), generator=gen)
    mask_r = torch.ones(len(which), reply_len, dtype=torch.long)
    mask_r[3, 3:] = 0  # a reply that ended early (right padding)
    ids = torch.cat([prompts[which], replies], dim=1)
    att = torch.cat([mask_p[which], mask_r], dim=1)
    return ids, att, prompt_len


def test_shared_prompts_groups_rows_by_their_prompt():
    ids, att, p = batch(50)
    first, inverse = shared_prompts(ids, att, p)
    assert sorted(first.tolist()) == [0, 1, 5]
    assert torch.equal(ids[first[inverse], :p], ids[:, :p])  # every row's prompt is its group's first row's
    assert shared_prompts(ids[[0, 1, 5]], att[[0, 1, 5]], p) is None  # all distinct: nothing to share
    assert shared_prompts(ids, att, 1) is None


@pytest.mark.parametrize("lora,value_head", [(True, False), (False, True)])
def test_shared_forward_equals_one_pass(tiny_policy, lora, value_head, monkeypatch):
    policy, _ = tiny_policy(lora=lora, value_head=value_head)
    shared_passes = []
    real = type(policy)._reply_logits_shared
    monkeypatch.setattr(type(policy), "_reply_logits_shared",
                        staticmethod(lambda *a: shared_passes.append(1) or real(*a)))
    if value_head:
        torch.nn.init.normal_(policy.value_head.weight, std=0.1)
    ids, att, p = batch(policy.model.config.vocab_size)
    results = {}
    for share in (False, True):
        policy.share_prompts = share
        policy.zero_grad(set_to_none=True)
        out = policy(ids, att, p, temperature=0.7, want_entropy=True)
        loss = (out.logprobs * att[:, p:]).sum() + out.entropy.mean() + (out.values.sum() if value_head else 0)
        loss.backward()
        grads = {n: q.grad.clone() for n, q in policy.named_parameters() if q.grad is not None}
        ref = policy.ref_logprobs(ids, att, p, temperature=0.7)
        results[share] = (out, grads, ref)
    assert len(shared_passes) == 2  # the policy's forward and the reference's, both shared
    (o0, g0, r0), (o1, g1, r1) = results[False], results[True]
    torch.testing.assert_close(o1.logprobs, o0.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o1.entropy, o0.entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r1, r0, atol=1e-5, rtol=1e-5)
    if value_head:
        torch.testing.assert_close(o1.values, o0.values, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_falls_back_to_one_pass(tiny_policy, monkeypatch):
    """transformers turns the cache off under gradient checkpointing; the policy then runs the one-pass forward."""
    policy, _ = tiny_policy(lora=True)
    policy.model.get_base_model().gradient_checkpointing_enable()
    policy.train()
    calls = []
    monkeypatch.setattr(type(policy), "_reply_logits_shared", lambda *a, **k: calls.append(1))
    ids, att, p = batch(policy.model.config.vocab_size)
    out = policy(ids, att, p)
    assert not calls and out.logprobs.shape == (ids.shape[0], ids.shape[1] - p)


def test_minibatch_order_by_prompt_keeps_each_prompts_samples_together():
    from rlhf.algo.step import Experience, chunk_slices, minibatch_order

    gen = torch.Generator().manual_seed(3)
    prompts = torch.randint(3, 50, (4, 6), generator=gen)
    ids = torch.cat([prompts.repeat_interleave(4, dim=0), torch.randint(3, 50, (16, 3), generator=gen)], dim=1)
    exp = Experience(ids, torch.ones_like(ids), torch.ones(16, 3), None, None, torch.zeros(16, 3), None, None, None, 6)
    by_sample = minibatch_order(exp, "sample", torch.Generator().manual_seed(0))
    assert torch.equal(by_sample, torch.randperm(16, generator=torch.Generator().manual_seed(0)))  # as before
    orders = [minibatch_order(exp, "prompt", torch.Generator().manual_seed(s)) for s in range(4)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(16))
        for s in chunk_slices(16, 8):  # a minibatch of 8 = two whole prompts
            assert len({int(r) // 4 for r in order[s]}) == 2
    assert len({tuple(o.tolist()) for o in orders}) == 4  # shuffled: prompts and the samples within them


def test_minibatch_by_is_checked():
    from rlhf.config import AlgoConfig

    assert any("algo.minibatch_by: 'group'" in e for e in AlgoConfig(minibatch_by="group").errors())
    assert not AlgoConfig(minibatch_by="prompt").errors()


def test_data_parallel_ranks_take_the_two_pass_forward_even_with_nothing_to_share(tiny_policy, monkeypatch):
    """Under data parallelism every rank runs the same graph (DeepSpeed's gradient buckets fill in backward order), so
    a micro-batch of distinct prompts also runs in two passes, each row its own prompt: same numbers."""
    import rlhf.model.policy as P

    policy, _ = tiny_policy(lora=True)
    ids, att, p = batch(policy.model.config.vocab_size)
    ids, att = ids[[0, 1, 5]], att[[0, 1, 5]]  # three distinct prompts
    plain = policy(ids, att, p).logprobs
    monkeypatch.setattr(P, "data_parallel", lambda: True)
    calls = []
    real = type(policy)._reply_logits_shared
    monkeypatch.setattr(type(policy), "_reply_logits_shared", staticmethod(lambda *a: calls.append(a[-1]) or real(*a)))
    torch.testing.assert_close(policy(ids, att, p).logprobs, plain, atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and calls[0].tolist() == [0, 1, 2]
