"""LoRA judge on the tiny random model: target packing, frozen base, training, rationale targets, save/load."""

from __future__ import annotations

import pytest
import torch
from helpers import FIXTURES as FIX

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig
from rlhf.dataset.prefs import load_pref_split, pref_rows
from rlhf.judge.lora_judge import (
    IGNORE,
    build_lora_judge,
    load_lora_judge,
    pack_targets,
    save_lora_judge,
    train_lora_judge,
    training_examples,
)

TINY = ModelConfig(source="tiny_random")


def test_pack_targets_aligns_labels_to_the_right():
    inputs, labels, keep = pack_targets([([1, 2, 3], [7]), ([4, 5], [8, 9, 10])])
    assert keep == 3
    assert inputs == [[1, 2, 3], [4, 5, 8, 9]]
    assert labels.tolist() == [[IGNORE, IGNORE, 7], [8, 9, 10]]


def test_training_examples_both_orders_and_rationale():
    judge = build_lora_judge(TINY, JudgeConfig(num_demos=0, max_len=128))
    row = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6", "rationale": "2 + 3 is 5."}
    (ab, t_ab), (ba, t_ba) = training_examples(judge, row, use_rationale=False)
    a_id, b_id = judge.prompter.verdict_ids
    assert t_ab == [a_id] and t_ba == [b_id] and ab != ba
    (_, t_rat), _ = training_examples(judge, row, use_rationale=True)
    assert t_rat[0] == a_id and t_rat[-1] == judge.tok.eos_token_id and len(t_rat) > 3
    pointwise = build_lora_judge(TINY, JudgeConfig(num_demos=0, mode="pointwise", max_len=128))
    (_, good), (_, bad) = training_examples(pointwise, row, use_rationale=False)
    assert good == [pointwise.prompter.verdict_ids[-1]] and bad == [pointwise.prompter.verdict_ids[0]]


def test_lora_judge_trains_adapter_only_and_roundtrips(tmp_path):
    cfg = JudgeConfig(num_demos=0, max_len=64, train_steps=4, batch_size=3, lr=1e-2, eval_batch_size=4)
    judge = build_lora_judge(TINY, cfg)
    base_before = {n: p.detach().clone() for n, p in judge.model.named_parameters() if "lora_" not in n}
    rows = pref_rows(DatasetConfig(name="synthetic_prefs", num_train=24, num_test=12), "train")
    hist = train_lora_judge(judge, rows, cfg)
    assert len(hist) == 4 and hist[-1]["loss"] < hist[0]["loss"]
    for n, p in judge.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n
            assert not p.requires_grad
    out = save_lora_judge(judge, tmp_path / "judge", TINY)
    assert (out / "adapter_model.safetensors").is_file() and (out / "judge_meta.json").is_file()
    assert not (out / "model.safetensors").exists()
    test = rows[:4]
    args = ([r["prompt"] for r in test], [r["chosen"] for r in test], [r["rejected"] for r in test])
    before = judge.score_pairs(*args)
    loaded = load_lora_judge(out)
    after = loaded.score_pairs(*args)
    assert before[0] == pytest.approx(after[0], abs=1e-5)


def test_a_reference_guided_judge_loads_with_the_demonstrations_it_was_trained_with(tmp_path):
    """The saved demonstrations keep their reference answers: a judge.reference=answer judge shows them in its demo
    turns, so a loaded judge must read exactly the prompt prefix the trained one read."""
    cfg = JudgeConfig(num_demos=2, mode="pointwise", reference="answer", max_len=256)
    judge = build_lora_judge(TINY, cfg)
    assert all(d.get("answer") for d in judge.prompter.demos)
    loaded = load_lora_judge(save_lora_judge(judge, tmp_path / "judge", TINY))
    assert loaded.prompter.prefix_ids == judge.prompter.prefix_ids


def test_lora_judge_with_rationales_fixture():
    cfg = JudgeConfig(num_demos=0, max_len=96, train_steps=2, batch_size=2, lr=1e-3, use_rationales=True,
                      rubric='{"criteria": "helpfulness and harmlessness", "scale": [1, 5], "output": "a digit"}')
    rows = list(load_pref_split(DatasetConfig(name="hh_rationales", path=str(FIX / "hh_rationales_sample.jsonl")),
                                "train"))
    judge = build_lora_judge(TINY, cfg)
    hist = train_lora_judge(judge, rows, cfg)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    # rationale tokens make the supervised target longer than the verdict alone: loss is the token mean
    assert "verdict_accuracy" in hist[0]


def test_lora_layers_limits_adapter_to_top_layers():
    from rlhf.judge.lora_judge import top_layers

    assert top_layers(30, 0) is None and top_layers(30, 30) is None and top_layers(30, 2) == [28, 29]
    judge = build_lora_judge(TINY, JudgeConfig(num_demos=0, lora_layers=1))
    names = [n for n, p in judge.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)


def test_lora_layers_on_bare_backbone_for_bt_rm():
    import re

    from rlhf.judge.bt_rm import build_reward_model
    from rlhf.judge.lora_judge import target_regex

    rx = target_regex(["q_proj", "v_proj"], [28, 29])
    assert re.fullmatch(rx, "model.layers.29.self_attn.q_proj") and re.fullmatch(rx, "layers.28.self_attn.v_proj")
    assert not re.fullmatch(rx, "layers.2.self_attn.q_proj") and not re.fullmatch(rx, "layers.28.self_attn.k_proj")
    rm = build_reward_model(TINY, JudgeConfig(lora_layers=1))
    names = [n for n, p in rm.backbone.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)


@pytest.mark.parametrize("num_demos,rationale", [(2, False), (1, True)])
def test_prefix_reuse_in_training_gives_the_same_loss_and_gradients(num_demos, rationale):
    """One prefix forward per step, expanded over the batch, equals recomputing the prefix for every example."""
    from dataclasses import replace

    from rlhf.judge.lora_judge import judge_step_loss

    cfg = JudgeConfig(num_demos=num_demos, max_len=96, lora=replace(JudgeConfig().lora, dropout=0.0))
    judge = build_lora_judge(TINY, cfg)
    judge.model.train()  # (dropout 0: the two paths must see the same function)
    with torch.no_grad():  # a non-zero adapter, so the LoRA weights get gradients through the prefix too
        for n, p in judge.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    rows = pref_rows(DatasetConfig(name="synthetic_prefs", num_train=8, num_test=4), "train")[:3]
    rows = [dict(r, rationale="because the numbers add up") for r in rows]
    examples = [ex for r in rows for ex in training_examples(judge, r, use_rationale=rationale)]
    params = [p for p in judge.model.parameters() if p.requires_grad]
    results = []
    for reuse in (False, True):
        judge.model.zero_grad(set_to_none=True)
        out = judge_step_loss(judge, examples, reuse_prefix=reuse)
        out["loss"].backward()
        results.append((out, [p.grad.clone() for p in params]))
    (a, ga), (b, gb) = results
    assert float(a["loss"].detach()) == pytest.approx(float(b["loss"].detach()), abs=1e-5)
    assert float(a["verdict_accuracy"]) == float(b["verdict_accuracy"])
    assert max((x - y).abs().max().item() for x, y in zip(ga, gb)) < 1e-5
    assert max(x.abs().max().item() for x in gb) > 1e-4  # gradients are not all zero
