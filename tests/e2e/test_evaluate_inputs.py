"""`python -m rlhf.evaluate` refuses bad input: exit 2, one `error: <key>: ...` line per problem, no traceback, no output.

Table-driven over the classes of bad input: config values (the shared checks of rlhf.config and the evaluate-only
ones), empty input files, score files with no known subset, non-finite or boolean scores, missing mandatory keys and
errors raised while the task runs."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf.config import ConfigError, JudgeConfig
from rlhf.eval import rewardbench as rb
from rlhf.evaluate import EvaluateConfig, evaluate, input_errors

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
SCORES = FIX / "rewardbench_scores_sample.jsonl"
PREDICTIONS = FIX / "gsm8k_predictions.jsonl"

# name -> file content; the cases refer to them as {name}
INPUTS = {
    "empty.jsonl": "",
    "blank_scores.jsonl": "\n  \n",
    "unknown.jsonl": "".join(json.dumps({"subset": s, "score_chosen": 1, "score_rejected": 0}) + "\n"
                             for s in ("foo", "bar", "baz", "qux", "quux", "corge", "grault")),
    "bool.jsonl": ('{"subset": "hep-go", "score_chosen": 1, "score_rejected": 0}\n'
                   '{"subset": "hep-go", "score_chosen": 2, "score_rejected": 0}\n'
                   '{"subset": "hep-go", "score_chosen": true, "score_rejected": false}\n'),
    "inf.jsonl": '{"subset": "hep-go", "score_chosen": 1, "score_rejected": 0}\n'
                 '{"subset": "hep-go", "score_chosen": 1, "score_rejected": -Infinity}\n',
    "nan.jsonl": '{"subset": "hep-go", "score_chosen": NaN, "score_rejected": 0}\n',
    "bad_json.jsonl": '{"answer": "#### 1", "response": "1"}\n{"answer": "#### 2", "response": \n',
}

# (id, CLI arguments, expected substrings of the error lines); {out} is the output path, {tmp} the folder of INPUTS
CASES = [
    # 1. config values: the shared checks (rlhf.config.config_errors) and the evaluate-only ones
    ("judge_num_demos", ["task=rewardbench", f"scores={SCORES}", "output={out}", "judge.num_demos=9"],
     ["judge.num_demos: must be between 0 and 6, got 9"]),
    ("unknown_task", ["task=rewardbenh", f"scores={SCORES}", "output={out}"],
     ["task: 'rewardbenh' is not one of"]),
    ("gsm8k_no_predictions", ["task=gsm8k", "dataset=rewardbench", "output={out}"],
     ["predictions: missing; pass predictions=FILE.jsonl"]),
    ("rewardbench_no_scores", ["task=rewardbench", "output={out}"],
     ["scores: missing; pass scores=FILE.jsonl", "reward.name='exact_match'"]),
    ("predictions_not_found", ["task=gsm8k", "predictions={tmp}/nope.jsonl", "output={out}"],
     ["predictions: {tmp}/nope.jsonl does not exist"]),
    # 2. empty input files
    ("empty_predictions", ["task=gsm8k", "predictions={tmp}/empty.jsonl", "output={out}"],
     ["predictions: {tmp}/empty.jsonl has no rows (empty file)"]),
    ("blank_scores", ["task=preference", "scores={tmp}/blank_scores.jsonl", "output={out}"],
     ["scores: {tmp}/blank_scores.jsonl has no rows (empty file)"]),
    # 3. no subset of the score file belongs to a section
    ("unknown_subsets", ["task=rewardbench", "scores={tmp}/unknown.jsonl", "output={out}"],
     ["scores: {tmp}/unknown.jsonl: no subset belongs to a RewardBench section",
      "'foo', 'bar', 'baz', 'qux', 'quux' and 2 more"]),
    # 4. scores that are not finite numbers
    ("bool_score", ["task=rewardbench", "scores={tmp}/bool.jsonl", "output={out}"],
     ["scores: {tmp}/bool.jsonl line 3: field 'score_chosen' must be a finite number, got true"]),
    ("inf_score", ["task=preference", "scores={tmp}/inf.jsonl", "output={out}"],
     ["scores: {tmp}/inf.jsonl line 2: field 'score_rejected' must be a finite number, got -Infinity"]),
    ("nan_score", ["task=rewardbench", "scores={tmp}/nan.jsonl", "output={out}"],
     ["scores: {tmp}/nan.jsonl line 1: field 'score_chosen' must be a finite number, got NaN"]),
    # 5. missing mandatory keys, and errors raised while the task runs
    ("no_output", ["task=gsm8k", f"predictions={PREDICTIONS}"],
     ["output: missing; pass output=OUT.json"]),
    ("no_task", [f"predictions={PREDICTIONS}", "output={out}"],
     ["task: missing; pass task=gsm8k|rewardbench|preference"]),
    ("bad_json_line", ["task=gsm8k", "predictions={tmp}/bad_json.jsonl", "output={out}"],
     ["predictions: {tmp}/bad_json.jsonl line 2: not valid JSON"]),
    ("output_overwrites_input", ["task=preference", "scores={tmp}/nan.jsonl", "output={tmp}/nan.jsonl"],
     ["output: {tmp}/nan.jsonl (and its .md table) would overwrite the scores file"]),
]


def run_cli(tmp_path: Path, args):
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    for name, text in INPUTS.items():
        (inputs / name).write_text(text)
    out = tmp_path / "out" / "result.json"
    argv = [a.format(out=out, tmp=inputs) for a in args]
    proc = subprocess.run([sys.executable, "-m", "rlhf.evaluate", *argv, f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, inputs, out


def error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_bad_input(tmp_path, args, expected):
    proc, inputs, out = run_cli(tmp_path, args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr)
    assert lines, proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: "), proc.stderr  # the culprit is the last thing printed
    text = "\n".join(lines)
    for fragment in expected:
        assert fragment.format(tmp=inputs) in text, text
    # nothing written: no output folder, no result, and every input file as it was
    assert not out.parent.exists()
    assert not proc.stdout.strip().startswith("{") and "wrote " not in proc.stdout
    assert sorted(p.name for p in inputs.iterdir()) == sorted(INPUTS)
    for name, text_in in INPUTS.items():
        assert (inputs / name).read_text() == text_in


def test_cli_reports_every_problem_at_once(tmp_path):
    """Two bad values, a missing key and a missing file: every one on its own line, none hides another."""
    proc, inputs, out = run_cli(tmp_path, ["task=gsm8k", "predictions={tmp}/nope.jsonl", "judge.num_demos=9",
                                           "limit=-3"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = error_lines(proc.stderr)
    assert lines == [
        "error: output: missing; pass output=OUT.json",
        f"error: predictions: {inputs}/nope.jsonl does not exist",
        "error: limit: must be >= 0 (0: all examples), got -3",
        "error: judge.num_demos: must be between 0 and 6, got 9",
    ], proc.stderr


# ------------------------------------------------------------------------------------------------- in-process checks
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
