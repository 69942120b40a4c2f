"""task=judge_on_policy: the ranking numbers by hand, the reply reader, start-up checks, and a tiny-model run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.config import DatasetConfig, GenerationConfig, JudgeConfig, ModelConfig, RewardConfig
from rlhf.eval.judge_on_policy import ranking, read_replies
from rlhf.evaluate import EvaluateConfig, evaluate, input_errors

TINY = ModelConfig(source="tiny_random")
ANSWER = "2 + 3 = <<2+3=5>>5\n#### 5"


def test_ranking_hand_computed():
    # problem 0: right 0.9 vs wrong 0.5 and 0.9 -> 1 + 1/2 of 2; problem 1: right 0.2 vs wrong 0.4 -> 0 of 1
    scores = torch.tensor([0.9, 0.5, 0.9, 0.2, 0.4])
    right = torch.tensor([True, False, False, True, False])
    r = ranking(scores, right, [0, 0, 0, 1, 1])
    assert r["group_accuracy"] == pytest.approx(1.5 / 3) and r["group_pairs"] == 3
    # all right vs wrong: 0.9 beats 0.5, 0.4, ties 0.9 (2.5 of 3); 0.2 loses to all three (0 of 3)
    assert r["auc"] == pytest.approx(2.5 / 6) and r["pairs"] == 6
    assert math.isnan(ranking(scores, torch.zeros(5, dtype=torch.bool), [0] * 5)["auc"])


def test_read_replies_from_jsonl_or_an_earlier_output(tmp_path):
    rows = [{"question": "Add 2 and 3.", "answer": ANSWER, "response": "#### 5", "extra": 1}]
    jl = tmp_path / "r.jsonl"
    jl.write_text(json.dumps(rows[0]) + "\n")
    assert read_replies(str(jl)) == [{k: rows[0][k] for k in ("question", "answer", "response")}]
    out = tmp_path / "old.json"
    out.write_text(json.dumps({"replies": rows}))
    assert read_replies(str(out)) == read_replies(str(jl))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "Q", "response": "R"}) + "\n")
    with pytest.raises(ValueError, match=r"^predictions: .*bad\.jsonl row 0: missing field 'answer'"):
        read_replies(str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"has no \"replies\" list"):
        read_replies(str(tmp_path / "bad.json"))


def test_config_errors_for_the_task(tmp_path):
    base = dict(task="judge_on_policy", output=str(tmp_path / "o.json"), reward=RewardConfig(name="bt_rm"))
    assert input_errors(EvaluateConfig(**base)) == []
    (tmp_path / "p.jsonl").write_text("{}\n")
    errs = input_errors(EvaluateConfig(**base, predictions=str(tmp_path / "p.jsonl"), checkpoint=str(tmp_path)))
    assert any(e.startswith("checkpoint: task=judge_on_policy with predictions=") for e in errs), errs
    errs = input_errors(EvaluateConfig(task="judge_on_policy", output=str(tmp_path / "o.json"), samples=0))
    assert any(e.startswith("reward.name: task=judge_on_policy scores replies with a judge/RM") for e in errs), errs
    assert any(e.startswith("samples: must be >= 1") for e in errs), errs
    errs = input_errors(EvaluateConfig(**base, dataset=DatasetConfig(name="synthetic_chat")))
    assert any(e.startswith("dataset.name: task=judge_on_policy grades replies to math") for e in errs), errs


def test_samples_replies_scores_them_and_reuses_them(tmp_path):
    """Model mode on the tiny model: 2 problems x 3 samples, graded and scored; the output's replies feed a second
    run (predictions=OUT.json) that grades the same replies the same way (the RM is trained again there)."""
    judge = JudgeConfig(train_steps=2, max_len=96, heldout_pairs=0, num_demos=0, eval_batch_size=4)
    common = dict(task="judge_on_policy", model=TINY, reward=RewardConfig(name="bt_rm"), judge=judge)
    first = evaluate(EvaluateConfig(**common, output=str(tmp_path / "a.json"), limit=2, samples=3,
                                    generation=GenerationConfig(max_new_tokens=6, eval_batch_size=6)))
    assert first["n"] == 6 and first["problems"] == 2 and first["n_right"] + first["n_wrong"] == 6
    assert all(set(r) == {"question", "answer", "response", "right", "score"} for r in first["replies"])
    assert (tmp_path / "a.md").read_text().startswith("| reward | replies (right / wrong)")
    again = evaluate(EvaluateConfig(**common, output=str(tmp_path / "b.json"), predictions=str(tmp_path / "a.json")))
    key = lambda rows: [(r["question"], r["response"], r["right"]) for r in rows]  # noqa: E731
    assert key(again["replies"]) == key(first["replies"])
