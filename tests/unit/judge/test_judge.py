"""Rubric judge: rubric parsing, verdict math, prefix KV-cache reuse, A/B symmetry (tiny random model)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ROOT
from omegaconf import OmegaConf

from rlhf.config import ConfigError, JudgeConfig, ModelConfig
from rlhf.judge import prompts as jp
from rlhf.judge.prefix_forward import PrefixCache, last_logits
from rlhf.judge.rubric_judge import RubricJudge
from rlhf.judge.verdict import (
    expected_score,
    position_bias,
    symmetric_pairwise,
    verdict_probs,
)
from rlhf.model.tensors import pad_sequences, position_ids_from_mask

CONF = ROOT / "conf" / "judge"
DEMOS = [
    {"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.\n#### 4", "rejected": "2 + 2 = 5.\n#### 5"},
    {"prompt": "What is 3 * 3?", "chosen": "3 * 3 = 9.\n#### 9", "rejected": "I cannot help with that."},
    {"prompt": "What is 7 - 2?", "chosen": "7 - 2 = 5.\n#### 5", "rejected": "7 + 2 = 9.\n#### 9"},
]
ITEMS = (["What is 10 + 5?", "Tom has 4 apples and eats one. How many are left?", "Add 3 and 4."],
         ["10 + 5 = 15.\n#### 15", "4 - 1 = 3.\n#### 3", "7"],
         ["10 + 5 = 16.\n#### 16", "I'd rather not say.", "3 + 4 = 8, a long winded answer with many words in it"])




def make_judge(tiny, **kw) -> RubricJudge:
    model, tok = tiny
    cfg = JudgeConfig(**{"num_demos": 2, "eval_batch_size": 2, **kw})
    return RubricJudge(model, tok, cfg, jp.select_demos(DEMOS, cfg.num_demos, 0) if cfg.num_demos else [])


# ------------------------------------------------------------------------------------------------------ pure parts
def test_parse_rubric_and_errors():
    r = jp.parse_rubric(JudgeConfig().rubric)
    assert (r.low, r.high, r.score_values) == (1, 5, [1, 2, 3, 4, 5])
    for bad in ['{"criteria": ""}', "not json", '{"criteria": "x", "scale": [5, 1]}', '{"criteria": "x", "scale": [0, 10]}',
                '{"criteria": "x",\n "scale": [1, 5]}']:
        with pytest.raises(ConfigError, match="judge.rubric"):
            jp.parse_rubric(bad)


def test_verdict_math_hand_computed():
    probs = verdict_probs(torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]]))
    assert torch.allclose(probs, torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.allclose(expected_score(probs, [1, 5]), torch.tensor([4.0, 3.0]))
    p_ab, p_ba = torch.tensor([[0.8, 0.2]]), torch.tensor([[0.3, 0.7]])
    assert symmetric_pairwise(p_ab, p_ba).item() == pytest.approx(0.75)
    assert symmetric_pairwise(p_ba, p_ab).item() == pytest.approx(0.25)  # the swap gives the complement
    assert position_bias(p_ab, p_ba).item() == pytest.approx(0.05)  # (0.8 + 0.3) / 2 - 0.5


def test_clip_ids_keeps_head_and_tail():
    assert jp.clip_ids(list(range(10)), 20) == list(range(10))
    assert jp.clip_ids(list(range(10)), 6, marker=[-1]) == [0, 1, -1, 7, 8, 9]


def test_select_demos_seeded_and_balanced():
    pool = [dict(d, i=i) for i, d in enumerate(DEMOS * 4)]
    a, b = jp.select_demos(pool, 4, 7), jp.select_demos(pool, 4, 7)
    assert [d["i"] for d in a] == [d["i"] for d in b]
    assert sum(d["_flip"] for d in a) == 2
    with pytest.raises(ConfigError):
        jp.select_demos(pool[:2], 3, 0)


def test_positions_from_left_padded_mask():
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert position_ids_from_mask(mask, offset=10).tolist() == [[10, 11, 12], [10, 10, 10]]


def test_verdict_tokens_single_and_lead_shared(tiny):
    _, tok = tiny
    lead, ids = jp.verdict_token_ids(tok, "Score: ", [str(k) for k in range(1, 6)])
    for k, i in zip(range(1, 6), ids):
        assert tok(f"Score: {k}", add_special_tokens=False)["input_ids"] == lead + [i]
    lead, ids = jp.verdict_token_ids(tok, "Verdict: ", ["A", "B"])
    assert tok.decode(lead + [ids[1]]) == "Verdict: B"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_judge_yaml_files_are_valid(tiny, name):
    def layers(stem):  # a preset may build on another of the group (its defaults list), as Hydra composes it
        raw = OmegaConf.load(CONF / f"{stem}.yaml")
        bases = [b for b in raw.pop("defaults", []) if b != "_self_"]
        return [layer for b in bases for layer in layers(b)] + [raw]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(JudgeConfig), *layers(name)))
    jp.parse_rubric(cfg.rubric)
    assert 0 <= cfg.num_demos <= 6
    prompter = jp.JudgePrompter(tiny[1], cfg, jp.select_demos(DEMOS * 2, cfg.num_demos, cfg.demo_seed))
    rubric = jp.parse_rubric(cfg.rubric)
    expected = 2 if cfg.mode == "pairwise" else rubric.high - rubric.low + 1
    assert len(prompter.verdict_ids) == len(prompter.labels) == expected


# -------------------------------------------------------------------------------------------------- model paths
def test_prefix_cache_logits_match_no_cache(tiny):
    model, tok = tiny
    judge = make_judge(tiny, num_demos=3)
    suffixes = [judge.prompter.pair_suffix(p, a, b) for p, a, b in zip(*ITEMS)]
    assert len({len(s) for s in suffixes}) > 1  # different lengths -> padding is exercised
    cache = PrefixCache(model, judge.prompter.prefix_ids, torch.device("cpu"))
    with torch.no_grad():
        with_cache = last_logits(model, judge.prompter.prefix_ids, suffixes, judge.pad_id, torch.device("cpu"), cache)
        without = last_logits(model, judge.prompter.prefix_ids, suffixes, judge.pad_id, torch.device("cpu"), None)
        single = last_logits(model, judge.prompter.prefix_ids, suffixes[1:2], judge.pad_id, torch.device("cpu"), None)
    assert with_cache.shape == (3, model.config.vocab_size)
    assert without.std() > 0.1
    assert torch.allclose(with_cache, without, atol=1e-4)
    assert torch.allclose(single[0], without[1], atol=1e-4)  # padding does not change a row
    # the cache is reused unchanged across batches
    again = last_logits(model, judge.prompter.prefix_ids, suffixes, judge.pad_id, torch.device("cpu"), cache)
    assert torch.allclose(again, with_cache, atol=1e-6)


def test_pairwise_symmetric_and_cache_consistent(tiny):
    judge = make_judge(tiny)
    p_ab = judge.prob_first_better(*ITEMS)
    p_ba = judge.prob_first_better(ITEMS[0], ITEMS[2], ITEMS[1])
    assert torch.allclose(p_ab + p_ba, torch.ones(3), atol=1e-6)
    assert (p_ab - 0.5).abs().max() > 1e-3  # not trivially 0.5
    assert torch.allclose(judge.prob_first_better(*ITEMS, use_cache=False), p_ab, atol=1e-4)
    sc, sr = judge.score_pairs(*ITEMS)
    assert all(c + r == pytest.approx(1.0) for c, r in zip(sc, sr))
    assert set(judge.last_metrics) == {"position_bias", "order_agreement"}


def test_pointwise_probs_sum_to_one_and_score_in_range(tiny):
    judge = make_judge(tiny, mode="pointwise", num_demos=2)
    probs = judge.score_probs(ITEMS[0], ITEMS[1])
    assert probs.shape == (3, 5)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-6)
    scores = judge.pointwise_scores(ITEMS[0], ITEMS[1])
    assert torch.allclose(scores, expected_score(probs, [1, 2, 3, 4, 5]))
    assert ((scores >= 1) & (scores <= 5)).all()
    with pytest.raises(ValueError, match="pairwise"):
        judge.prob_first_better(*ITEMS)


def test_rationale_is_text_and_zero_demo_prefix(tiny):
    judge = make_judge(tiny, num_demos=0, rationale_max_new_tokens=3)
    assert len(judge.prompter.demos) == 0
    text = judge.rationale(ITEMS[0][0], ITEMS[1][0], ITEMS[2][0])
    assert text.split(":")[0] in ("A", "B")


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_batched_rationales_equal_one_at_a_time_without_cache(tiny, mode):
    """rationales() (shared prefix cache, batches of 2, pads between prefix and suffix) gives each item the greedy
    text that a plain generate() on its full [prefix | suffix | verdict | "Reason:"] ids gives alone."""
    judge = make_judge(tiny, num_demos=2, mode=mode, rationale_max_new_tokens=5)
    model, tok = tiny
    pr = judge.prompter
    lead = tok("\nReason:", add_special_tokens=False)["input_ids"]
    want = []
    for p, a, b in zip(*ITEMS):
        sx = pr.pair_suffix(p, a, b) if mode == "pairwise" else pr.single_suffix(p, a)
        verdict = pr.verdict_ids[int(judge.verdict_logits([sx], use_cache=False)[0].argmax())]
        ids = torch.tensor([pr.prefix_ids + sx + [verdict] + lead])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=5, pad_token_id=judge.pad_id)
        want.append(f"{tok.decode([verdict]).strip()}: "
                    + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    got = judge.rationales(*ITEMS) if mode == "pairwise" else judge.rationales(ITEMS[0], ITEMS[1])
    suffixes = [pr.pair_suffix(*x) if mode == "pairwise" else pr.single_suffix(*x[:2]) for x in zip(*ITEMS)]
    assert len({len(sx) for sx in suffixes}) == 3  # unequal lengths: the batches really pad
    assert got == want
    assert judge.rationale(ITEMS[0][1], ITEMS[1][1], ITEMS[2][1]) == want[1]
    assert judge.rationales([], []) == []


@pytest.mark.slow
def test_embedded_judge_cache_matches_and_symmetric():
    from rlhf.judge.rubric_judge import build_rubric_judge

    judge = build_rubric_judge(ModelConfig(), JudgeConfig(num_demos=1, eval_batch_size=4))
    prompts, good, bad = [ITEMS[0][0]], [ITEMS[1][0]], ["I'm sorry, but I can't help with that request."]
    suffixes = [judge.prompter.pair_suffix(prompts[0], good[0], bad[0])]
    assert torch.allclose(judge.verdict_logits(suffixes, True), judge.verdict_logits(suffixes, False), atol=1e-4)
    p = judge.prob_first_better(prompts, good, bad)
    q = judge.prob_first_better(prompts, bad, good)
    assert torch.allclose(p + q, torch.ones(1), atol=1e-6)


def test_bench_judge_runs_on_tiny_model():
    import importlib.util

    path = ROOT / "scripts" / "bench_judge.py"
    spec = importlib.util.spec_from_file_location("bench_judge", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.bench_judge(ModelConfig(source="tiny_random"), num_demos=1, pairs=2, repeats=1)
    assert out["with_reuse"]["pairs_per_s"] > 0 and out["without_reuse"]["pairs_per_s"] > 0
    assert out["max_abs_prob_diff"] < 1e-4 and out["token_ratio"] > 1


# ------------------------------------------------------------------------------------------ reference-guided grading
def test_reference_of_each_mode_and_missing_reference():
    math_row = {"prompt": "Q", "answer": "3 * 4 = <<3*4=12>>12\n#### 12"}
    chat_row = {"prompt": "Q", "reference": "A kind reply."}
    assert jp.reference_of(math_row, "none") is None
    assert jp.reference_of(math_row, "answer") == "12"
    assert jp.reference_of(math_row, "solution") == "3 * 4 = 12\n#### 12"
    assert jp.reference_of(chat_row, "answer") is None  # no math answer: shown without a reference
    assert jp.reference_of(chat_row, "solution") == "A kind reply."
    assert jp.reference_of({"prompt": "Q"}, "solution") is None
    assert jp.guided_request("Q", math_row, "answer") == "Q\n\n[Reference answer]\n12"
    assert jp.guided_request("Q", math_row, "none") == "Q"
    assert jp.guided_request("Q", {"prompt": "Q"}, "answer") == "Q"


def test_reference_guided_prompter_system_demos_and_bad_value(tiny):
    _, tok = tiny
    demos = [dict(d, answer=d["chosen"]) for d in DEMOS]
    free = jp.JudgePrompter(tok, JudgeConfig(num_demos=2), jp.select_demos(demos, 2, 0))
    guided = jp.JudgePrompter(tok, JudgeConfig(num_demos=2, reference="answer"), jp.select_demos(demos, 2, 0))
    assert "reference" not in free.prefix_text and "[Reference answer]" not in free.prefix_text
    assert "reference answer, it is correct" in guided.prefix_text
    assert guided.prefix_text.count("[Reference answer]") == 2  # each demonstration shows its reference too
    row = {"prompt": "What is 10 + 5?", "answer": "10 + 5 = 15\n#### 15"}
    assert guided.request(row).endswith("[Reference answer]\n15") and free.request(row) == row["prompt"]
    with pytest.raises(ConfigError, match="judge.reference"):
        jp.JudgePrompter(tok, JudgeConfig(reference="gold"))


def test_reference_guided_judge_reads_the_reference(tiny):
    """The same reply scores differently when the reference shown changes: the reference reaches the model."""
    judge = make_judge(tiny, reference="answer", num_demos=0)
    prompts = [judge.prompter.request({"prompt": "What is 10 + 5?", "answer": f"#### {n}"}) for n in (15, 16)]
    p = judge.prob_first_better(prompts, ["10 + 5 = 15.\n#### 15"] * 2, ["10 + 5 = 16.\n#### 16"] * 2)
    assert p.shape == (2,) and not torch.allclose(p[0], p[1])
