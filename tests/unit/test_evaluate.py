"""`rlhf.evaluate` in process: every bad value reported at once by input_errors, evaluate() refusing before it writes,
a failed write leaving no result, and the score-file reader's errors (the command-line side is
tests/e2e/test_evaluate_inputs.py)."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from helpers import FIXTURES as FIX

from rlhf.config import ConfigError, JudgeConfig
from rlhf.eval import rewardbench as rb
from rlhf.evaluate import EvaluateConfig, evaluate, input_errors

SCORES = FIX / "rewardbench_scores_sample.jsonl"
PREDICTIONS = FIX / "gsm8k_predictions.jsonl"


def test_two_bad_values_both_reported():
    cfg = EvaluateConfig(task="rewardbench", output="unused.json", scores=str(SCORES), seed=-1,
                         judge=JudgeConfig(num_demos=9))
    errors = input_errors(cfg)
    assert any(e.startswith("seed: must be >= 0") for e in errors), errors
    assert any(e.startswith("judge.num_demos: must be between 0 and 6") for e in errors), errors
    assert sum(e.startswith("seed:") for e in errors) == 1  # reported once, whichever check finds it


def test_good_configs_have_no_errors():
    assert input_errors(EvaluateConfig(task="rewardbench", output="o.json", scores=str(SCORES))) == []
    assert input_errors(EvaluateConfig(task="gsm8k", output="o.json", predictions=str(PREDICTIONS))) == []
    assert input_errors(EvaluateConfig(task="gsm8k", output="o.json")) == []  # model mode on synthetic_math


def test_evaluate_refuses_before_writing(tmp_path):
    out = tmp_path / "sub" / "r.json"
    cfg = EvaluateConfig(task="rewardbench", output=str(out), scores=str(SCORES), judge=JudgeConfig(num_demos=9))
    with pytest.raises(ConfigError, match="judge.num_demos"):
        evaluate(cfg)
    assert not out.parent.exists()


def test_failed_table_write_leaves_no_result(tmp_path, monkeypatch):
    import rlhf.evaluate as ev

    def broken(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ev, "atomic_write_text", broken)
    out = tmp_path / "r.json"
    with pytest.raises(ConfigError, match=r"^output: cannot write .*r\.json \(No space left on device\)$"):
        evaluate(EvaluateConfig(task="rewardbench", output=str(out), scores=str(SCORES)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, shown", [
    ("true", "true"), ("false", "false"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("NaN", "NaN"),
    ('"1.5"', '"1.5"'), ("[1]", "[1]"),
])
def test_score_file_refuses_non_finite_or_non_numeric(tmp_path, value, shown):
    f = tmp_path / "s.jsonl"
    f.write_text('{"subset": "hep-go", "score_chosen": 1, "score_rejected": 0}\n\n'
                 f'{{"subset": "hep-go", "score_chosen": 0, "score_rejected": {value}}}\n')
    with pytest.raises(ValueError) as e:
        rb.read_score_file(str(f))
    assert str(e.value) == f"scores: {f} line 3: field 'score_rejected' must be a finite number, got {shown}"


def test_score_file_reader_errors_name_key_file_and_line(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"subset": 3, "score_chosen": 1, "score_rejected": 0}\n')
    with pytest.raises(ValueError, match=rf"^scores: {re.escape(str(f))} line 1: field 'subset' must be a string, got 3$"):
        rb.read_score_file(str(f))
    f.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=rf"^scores: {re.escape(str(f))} line 1: expected a JSON object, got list$"):
        rb.read_score_file(str(f))
    f.write_bytes(b'{"subset": "\xff"}\n')
    with pytest.raises(ValueError, match=rf"^scores: {re.escape(str(f))} is not UTF-8 text"):
        rb.read_score_file(str(f))
    with pytest.raises(FileNotFoundError, match=rf"^scores: {re.escape(str(tmp_path))}/missing\.jsonl does not exist$"):
        rb.read_score_file(str(tmp_path / "missing.jsonl"))


def test_some_unknown_subsets_are_scored_with_a_warning(tmp_path, caplog):
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"subset": "hep-go", "score_chosen": 1, "score_rejected": 0}\n'
                 '{"subset": "my-subset", "score_chosen": 0, "score_rejected": 1}\n')
    with caplog.at_level(logging.WARNING, logger="rlhf.eval.rewardbench"):
        results, _ = rb.run_task(SimpleNamespace(scores=str(f)))
    assert results["unmapped"] == ["my-subset"]
    assert results["sections"] == {"Reasoning": 100.0} and results["overall"] == 100.0
    assert "my-subset" in caplog.text
    # task=preference has no sections: unknown subsets are plain subsets there
    pref, _ = rb.run_preference_task(SimpleNamespace(scores=str(f)))
    assert pref["accuracy"] == 50.0


def test_model_mode_names_match_their_sources():
    import rlhf.evaluate as ev
    from rlhf.dataset.math_data import MATH_DATASETS
    from rlhf.judge.factory import JUDGE_KINDS

    assert ev.MATH_DATASETS == MATH_DATASETS and ev.JUDGE_KINDS == JUDGE_KINDS
