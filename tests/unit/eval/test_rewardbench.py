"""RewardBench weighting against hand-computed values (tests/fixtures/rewardbench_scores_*.jsonl)."""

from __future__ import annotations

import json

import pytest
from helpers import FIXTURES as FIX

from rlhf.eval import rewardbench as rb


def test_pair_outcome_tie_counts_half():
    assert rb.pair_outcome(2.0, 1.0) == 1.0
    assert rb.pair_outcome(1.0, 1.0) == 0.5
    assert rb.pair_outcome(0.0, 1.0) == 0.0


def test_sample_without_prior_sets():
    rows = rb.read_score_file(str(FIX / "rewardbench_scores_sample.jsonl"))
    res = rb.score_records(rows)
    assert res["n"] == 11
    # alpacaeval-easy: win + tie = 0.75; mt-bench-easy: loss = 0
    assert res["subsets"]["alpacaeval-easy"] == pytest.approx(75.0)
    assert res["subsets"]["mt-bench-easy"] == pytest.approx(0.0)
    # Chat = (0.75*100 + 0*28) / 128 = 75/128
    assert res["sections"]["Chat"] == pytest.approx(58.59375)
    # Chat Hard: llmbar-natural 2/2
    assert res["sections"]["Chat Hard"] == pytest.approx(100.0)
    # Safety = (1*154 + 0*250) / 404
    assert res["sections"]["Safety"] == pytest.approx(38.118811881188)
    # Reasoning = (0.5*984 + 1*164 + 1*164) / (984 + 328) = 820/1312
    assert res["sections"]["Reasoning"] == pytest.approx(62.5)
    assert "Prior Sets" not in res["sections"]
    # overall = mean of the four sections = 259.2125618811881 / 4
    assert res["overall"] == pytest.approx(64.80314047029703)


def test_sample_with_prior_sets_weighted_half():
    res = rb.score_records(rb.read_score_file(str(FIX / "rewardbench_scores_prior.jsonl")))
    # Prior Sets = plain mean of anthropic_helpful (1/2) and shp (1/1) = 75
    assert res["sections"]["Prior Sets"] == pytest.approx(75.0)
    # overall = (2 * 259.2125618811881 + 75) / 9
    assert res["overall"] == pytest.approx(65.93612486248625)
    assert res["n"] == 14


def test_full_reasoning_equals_half_math_half_code():
    accs = {s: 0.0 for s in rb.EXAMPLE_COUNTS}
    accs.update({"math-prm": 0.9, "hep-cpp": 0.1, "hep-go": 0.2, "hep-java": 0.3, "hep-js": 0.4, "hep-python": 0.5,
                 "hep-rust": 0.6})
    sec = rb.section_scores(accs, {})
    assert sec["Reasoning"] == pytest.approx(100 * (0.9 + 0.35) / 2)


def test_synthetic_subsets_map_to_sections_by_observed_counts():
    rows = ([{"subset": "synth-format", "score_chosen": 1, "score_rejected": 0}] * 3
            + [{"subset": "synth-offtopic", "score_chosen": 0, "score_rejected": 1}]
            + [{"subset": "synth-refusal", "score_chosen": 1, "score_rejected": 1}])
    res = rb.score_records(rows)
    assert res["sections"]["Chat"] == pytest.approx(75.0)  # (1*3 + 0*1) / 4
    assert res["sections"]["Safety"] == pytest.approx(50.0)
    assert res["overall"] == pytest.approx(62.5)


def test_bad_line_reports_line_number():
    culprit = r"^scores: \S*rewardbench_scores_bad.jsonl line 3: missing field 'score_chosen'$"
    with pytest.raises(ValueError, match=culprit):
        rb.read_score_file(str(FIX / "rewardbench_scores_bad.jsonl"))


def test_evaluate_entry_point_file_mode(tmp_path):
    from rlhf.evaluate import EvaluateConfig, evaluate

    out = tmp_path / "rb.json"
    cfg = EvaluateConfig(task="rewardbench", output=str(out), scores=str(FIX / "rewardbench_scores_prior.jsonl"))
    results = evaluate(cfg)
    assert json.loads(out.read_text())["overall"] == pytest.approx(results["overall"])
    assert "| Chat |" in out.with_suffix(".md").read_text()
    cfg = EvaluateConfig(task="preference", output=str(tmp_path / "p.json"),
                         scores=str(FIX / "rewardbench_scores_sample.jsonl"))
    pref = evaluate(cfg)
    # 11 pairs: wins 1+1+1+1+1+1+1 = 7 (+ one tie = 0.5) -> 7.5 / 11
    assert pref["accuracy"] == pytest.approx(100 * 7.5 / 11)


def test_model_mode_scores_fixture_with_tiny_judge(tmp_path):
    from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig, RewardConfig
    from rlhf.evaluate import EvaluateConfig, evaluate

    cfg = EvaluateConfig(task="rewardbench", output=str(tmp_path / "rb.json"), model=ModelConfig(source="tiny_random"),
                         dataset=DatasetConfig(name="rewardbench", path=str(FIX / "rewardbench_sample.jsonl")),
                         reward=RewardConfig(name="rubric_judge"),
                         judge=JudgeConfig(num_demos=0, max_len=128, eval_batch_size=6))
    res = evaluate(cfg)
    assert res["n"] == 12
    assert set(res["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert 0.0 <= res["overall"] <= 100.0
