"""`python -m rlhf.evaluate` refuses bad input: exit 2, one `error: <key>: ...` line per problem, no traceback, no output.

Table-driven over the classes of bad input: config values (the shared checks of rlhf.config and the evaluate-only
ones), empty input files, score files with no known subset, non-finite or boolean scores, missing mandatory keys and
errors raised while the task runs. The same checks in process (rlhf.evaluate.input_errors, evaluate(), the score
file reader) are in tests/unit/test_evaluate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FIXTURES as FIX
from helpers import ROOT

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
    # 1. config values: the shared checks (rlhf.config.checks.config_errors) and the evaluate-only ones
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
