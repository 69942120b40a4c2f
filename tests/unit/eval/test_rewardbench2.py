"""RewardBench 2 scoring (rlhf/eval/rewardbench2.py) on hand-scored fixture rows, and model mode on the hub-schema
fixture with the tiny model."""

from __future__ import annotations

import math

import pytest
from helpers import FIXTURES

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig, RewardConfig
from rlhf.dataset.prefs import rb2_rows
from rlhf.eval.rewardbench2 import best_of_n, read_rb2_scores, summarise, ties_score
from rlhf.evaluate import EvaluateConfig, evaluate, input_errors

SCORES = FIXTURES / "rewardbench2_scores.jsonl"
ROWS = FIXTURES / "rewardbench2_sample.jsonl"


def test_best_of_n_with_ties_at_the_top():
    assert best_of_n([2, 1, 0, 0]) == 1.0
    assert best_of_n([1, 3, 0, 0]) == 0.0
    assert best_of_n([1, 1, 0, 0]) == 0.5  # official np.argmax would give 1
    assert best_of_n([1, 1, 1, 1]) == 0.25  # a constant reward scores chance, not 100 %


def test_ties_score_hand_computed():
    rows = read_rb2_scores(str(SCORES))
    t = ties_score([r for r in rows if r["subset"] == "Ties"])
    # ref: prompt 0 accurate (4 > 2), prompt 1 not; tied: prompt 0 accurate (4 > 2), prompt 1 not (2 < 2.5)
    assert (t["ref_accuracy"], t["tied_accuracy"]) == (0.5, 0.5)
    # tied gap vs spread: 2 > 1 yes, -0.5 > 1 no; min(ref gap, tied gap): 2 > 1 yes, -2 > 1 no
    assert (t["correctness_preferred"], t["correctness_preferred_hard"]) == (0.5, 0.5)
    assert t["margin_score"] == pytest.approx((math.tanh(1.0) + math.tanh(-3.0)) / 2)
    assert t["score"] == pytest.approx(0.5 + 0.01 * (math.tanh(1.0) + math.tanh(-3.0)) / 2)


def test_summary_is_the_unweighted_mean_of_subsets():
    res = summarise(read_rb2_scores(str(SCORES)))
    assert res["subsets"]["Factuality"] == 50.0 and res["subsets"]["Precise IF"] == 50.0
    assert (res["subsets"]["Math"], res["subsets"]["Safety"], res["subsets"]["Focus"]) == (100.0, 0.0, 100.0)
    ties = 100 * (0.5 + 0.01 * (math.tanh(1.0) + math.tanh(-3.0)) / 2)
    assert res["subsets"]["Ties"] == pytest.approx(ties)
    assert res["overall"] == pytest.approx((300 + ties) / 6)
    assert res["missing_subsets"] == []


def test_bad_score_lines_and_unknown_subsets_are_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "subset": "Math", "num_correct": 4, "scores": [1, 2, 3, 4]}\n')
    with pytest.raises(ValueError, match=r"line 1: field 'num_correct' must be an integer in \[1, 3\]"):
        read_rb2_scores(str(bad))
    bad.write_text('{"id": "a", "subset": "Math", "num_correct": 1, "scores": [1, NaN]}\n')
    with pytest.raises(ValueError, match="line 1"):
        read_rb2_scores(str(bad))
    with pytest.raises(ValueError, match="unknown RewardBench 2 subsets"):
        summarise([{"id": "a", "subset": "Chat", "num_correct": 1, "scores": [1, 0]}])


def test_hub_schema_rows_and_model_mode_on_the_tiny_model(tmp_path):
    ds = DatasetConfig(name="rewardbench2", path=str(ROWS))
    rows = rb2_rows(ds)
    assert len(rows) == 7 and rows[-1]["id"] == "tied:0" and rows[-1]["num_correct"] == 2
    out = tmp_path / "rb2.json"
    cfg = EvaluateConfig(task="rewardbench2", output=str(out), dataset=ds, model=ModelConfig(source="tiny_random"),
                         reward=RewardConfig(name="rubric_judge"), judge=JudgeConfig(num_demos=0, max_len=256))
    assert input_errors(cfg) == []
    res = evaluate(cfg)
    assert set(res["subsets"]) == {"Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"}
    assert 0.0 <= res["overall"] <= 100.0 and out.with_suffix(".md").is_file()
    wrong = EvaluateConfig(task="rewardbench2", output=str(out), reward=RewardConfig(name="bt_rm"))
    assert any(e.startswith("dataset.name: task=rewardbench2") for e in input_errors(wrong))
