"""`python -m rlhf.evaluate task=gsm8k predictions=...` on the hand-scored predictions fixture, and a bad row refused
(the scoring itself: tests/unit/task/test_gsm8k_eval.py)."""

import json
import subprocess
import sys

import pytest
from helpers import FIXTURES, ROOT

PREDICTIONS = FIXTURES / "gsm8k_predictions.jsonl"


def test_evaluate_cli_on_predictions(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.evaluate", "task=gsm8k", f"predictions={PREDICTIONS}", f"output={out}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["task"] == "gsm8k" and results["n"] == 9
    assert results["em_strict"] == pytest.approx(5 / 9)
    assert results["em_flexible"] == pytest.approx(7 / 9)
    assert out.with_suffix(".md").is_file()


def test_evaluate_cli_bad_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "#### 1", "response": "1"}\n{"answer": "#### 2"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.evaluate", "task=gsm8k", f"predictions={bad}", f"output={tmp_path / 'o.json'}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "row 1: missing field 'response'" in proc.stderr
