"""reward=self_reward: the log-ratio, the SFT loss and layout (rlhf/model/sft.py), demonstrations, and pi_SFT/pi_base
on one base (a second adapter on a LoRA actor, adapters off = pi_base)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config import DatasetConfig, ModelConfig, SFTConfig
from rlhf.model.sft import masked_nll, pack, response_logprobs, sequence_logprobs
from rlhf.model.shared import ACTOR_ADAPTER
from rlhf.reward.self_reward import demonstrations, run_sft, self_reward, sft_models
from rlhf.task import build_task


def test_self_reward_sum_and_length_normalised():
    sft, base, n = torch.tensor([-10.0, -4.0, 0.0]), torch.tensor([-14.0, -3.0, 0.0]), torch.tensor([4.0, 2.0, 0.0])
    assert self_reward(sft, base, n, normalize=False).tolist() == [4.0, -1.0, 0.0]
    assert self_reward(sft, base, n, normalize=True).tolist() == [1.0, -0.5, 0.0]  # empty reply: 0, not nan


def test_pack_uses_the_rollout_layout():
    ids, mask, rmask, p = pack([[5, 6], [7]], [[1, 2, 3], []], pad_id=0)
    assert p == 2
    assert ids.tolist() == [[5, 6, 1, 2, 3], [0, 7, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert rmask.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_masked_nll_hand_computed():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_nll(lp, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3 tokens


def test_sequence_logprobs_match_one_unpadded_forward(tiny_lm):
    model, _ = tiny_lm(seed=0)
    prompts, replies = [[11, 12, 13], [14]], [[21, 22], [23, 24, 25]]
    sums, counts = sequence_logprobs(model, prompts, replies, pad_id=0, batch_size=2)
    assert counts.tolist() == [2.0, 3.0]
    for i, (p, r) in enumerate(zip(prompts, replies)):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
        want = lp.gather(-1, torch.tensor(r).unsqueeze(-1)).sum().item()
        assert sums[i].item() == pytest.approx(want, abs=1e-4)


def test_math_demonstrations_are_reference_solutions_after_the_actor_prompt(tokenizer):
    task = build_task(DatasetConfig(name="synthetic_math", num_train=8, num_test=4))
    demos = demonstrations(task, tokenizer, "train", 3, max_len=384)
    item = task.items("train")[0]
    assert len(demos) == 3
    p, r = demos[0]
    assert tokenizer.decode(p) == task.prompt_text(tokenizer, item)
    assert r[-1] == tokenizer.eos_token_id and "####" in tokenizer.decode(r)
    short = demonstrations(task, tokenizer, "train", 3, max_len=len(p) + 5)
    assert len(short[0][1]) == 5  # cut to fit
    with pytest.raises(ValueError, match="sft.max_len"):
        demonstrations(task, tokenizer, "train", 3, max_len=4)


def test_sft_adapter_on_the_actor_base_trains_only_itself(tiny_policy):
    policy, tok = tiny_policy(lora=True)
    peft = policy.model
    actor_before = {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    sft, base = sft_models(peft, SFTConfig(), ModelConfig(source="tiny_random"), seed=0)
    assert peft.active_adapter == ACTOR_ADAPTER
    info = run_sft(sft, tok, DatasetConfig(name="synthetic_math", num_train=32, num_test=8),
                   SFTConfig(steps=4, batch_size=4, lr=5e-2, num_eval=4), seed=0)
    assert info["heldout_nll_after"] < info["heldout_nll_before"]
    assert peft.active_adapter == ACTOR_ADAPTER
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert trainable == set(actor_before)  # the SFT adapter ends frozen; the actor's flags are untouched
    assert all(torch.equal(p, actor_before[n]) for n, p in peft.named_parameters() if n in actor_before)
    # pi_base = every adapter off = the actor's reference; pi_SFT differs from it after training
    ids, mask, _, plen = pack([[11, 12]], [[21, 22, 23]], 0)
    with torch.no_grad():
        ref = policy.ref_logprobs(ids, mask, plen)
        lp_base = response_logprobs(base, ids, mask, plen)
        lp_sft = response_logprobs(sft, ids, mask, plen)
    assert torch.allclose(ref, lp_base, atol=1e-6)
    assert not torch.allclose(lp_sft, lp_base, atol=1e-4)
    assert math.isfinite(float(lp_sft.sum()))
