"""Bad input to `rlhf.train` on the command line: exit 2, one `error:` line per problem, nothing of ours written, the
traceback of an error while starting in the run's log only. The in-process checks of every class of bad input are in
tests/unit/test_train_inputs.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import write_bad_inputs
from launch import ROOT, child_env, train_cmd


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of broken inputs, one per class (tests/helpers.py)."""
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))


def run_cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(run_dir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=child_env())


def test_cli_bad_values_one_line_each_nothing_written(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(run, "generation.top_p=0", "algo.lr=inf")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: algo.lr: must be a finite number, got inf",
                     "error: generation.top_p: must be in (0, 1]; 0 keeps no token (use 1.0 to disable nucleus "
                     "sampling)"], proc.stderr
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    assert "error: algo.lr" in (run / "train.log").read_text()  # the same lines in the run dir's log


def test_cli_missing_file_is_one_line(tmp_path, bad):
    proc = run_cli(tmp_path / "run", "dataset=gsm8k", f"dataset.path={bad}/no_answer.jsonl")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing field 'answer'" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "config.yaml").exists()


def test_cli_error_while_starting_is_one_line_with_the_traceback_in_the_log(tmp_path):
    # passes every cheap check (config.json and tokenizer_config.json exist) but cannot be loaded
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "tokenizer_config.json").write_text("{}")
    run = tmp_path / "run"
    proc = run_cli(run, "model=hf", f"model.name_or_path={model}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "while starting" in errors[0], proc.stderr
    assert "Traceback" in (run / "train.log").read_text()
