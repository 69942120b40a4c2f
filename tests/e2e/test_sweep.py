"""Hydra multirun sweeps: one dir per job, the sweep summary from the on_multirun_end callback, submitit and SLURM
launcher presets."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from launch import PY, ROOT, TINY, child_env
from omegaconf import OmegaConf

from rlhf.algo.registry import register_training_configs
from rlhf.report.sweep import write_summary

ONE_STEP = ["algo=grpo", "steps=1", "algo.prompts_per_step=2", "algo.samples_per_prompt=2", "algo.minibatch_size=4",
            "num_eval=2", "generation.max_new_tokens=8", "generation.eval_max_new_tokens=8"]


def multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "rlhf.train", "-m", f"hydra.sweep.dir={sweep_dir}", *TINY, *ONE_STEP, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_sweep(sweep_dir: Path, swept_key: str, values: list) -> list:
    """Both job dirs are complete runs and the summary's rows match their summary.json files."""
    for job in ("0", "1"):
        d = sweep_dir / job
        for name in ("summary.json", "metrics.jsonl", "eval.json", ".hydra/overrides.yaml"):
            assert (d / name).is_file(), d / name
        assert (d / "checkpoints" / "step_000001" / "COMPLETE").is_file()
    for name in ("summary.jsonl", "summary.csv", "summary.md"):
        assert (sweep_dir / name).is_file(), name
    rows = [json.loads(line) for line in (sweep_dir / "summary.jsonl").read_text().splitlines()]
    assert [r["job"] for r in rows] == [0, 1]
    assert [r[swept_key] for r in rows] == values
    for r in rows:
        job = json.loads((sweep_dir / r["dir"] / "summary.json").read_text())
        assert r["status"] == "ok" and r["step"] == 1
        assert r["reward_mean"] == job["final"]["reward_mean"] and r["kl"] == job["final"]["kl"]
        assert r["em_flexible"] == job["eval_after"]["em_flexible"]
        assert r["overrides"] == f"{swept_key}={r[swept_key]}"
    with open(sweep_dir / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [t[swept_key] for t in table] == values and {"reward_mean", "kl", "em_flexible"} <= set(table[0])
    md = (sweep_dir / "summary.md").read_text()
    assert f"| job | {swept_key} | status |" in md and md.count("| ok |") == 2
    return rows


def test_basic_multirun_writes_job_dirs_and_summary(tmp_path):
    """2 x 1 jobs (kl_coef 0.01, 0.05 at seed 1), one step each, run one after the other in this process."""
    proc = multirun(tmp_path, "algo.kl_coef=0.01,0.05", "seed=1")
    check_sweep(tmp_path, "algo.kl_coef", ["0.01", "0.05"])
    assert "sweep summary (2 jobs)" in proc.stdout + proc.stderr
    kl = [OmegaConf.load(tmp_path / j / "config.yaml").algo.kl_coef for j in "01"]
    assert kl == [0.01, 0.05]  # each job really ran with its own override


def test_submitit_local_launcher_runs_the_sweep(tmp_path):
    """A one-job, one-step sweep through hydra-submitit-launcher's local executor (the job runs in a subprocess
    started by submitit, as on SLURM)."""
    multirun(tmp_path, "hydra/launcher=submitit_local_cpu", "seed=5")
    d = tmp_path / "0"
    assert (d / "summary.json").is_file() and (d / "checkpoints" / "step_000001" / "COMPLETE").is_file()
    assert list((tmp_path / ".submitit").iterdir()), "submitit wrote no job folder"
    rows = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["dir"] == "0" and "seed=5" in rows[0]["overrides"]
    job = json.loads((d / "summary.json").read_text())
    assert rows[0]["reward_mean"] == job["final"]["reward_mean"] and rows[0]["em_flexible"] == \
        job["eval_after"]["em_flexible"]
    assert "| ok |" in (tmp_path / "summary.md").read_text()


def test_summary_marks_failed_jobs_and_rebuilds_from_the_dirs(tmp_path):
    for num, seed, done in ((0, 1, True), (1, 2, False)):
        d = tmp_path / str(num)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- algo.kl_coef=0.1\n- seed={seed}\n")
        (d / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (d / "config.yaml").write_text("seed: 1\n")
        if done:
            (d / "summary.json").write_text(json.dumps({"step": 3, "final": {"reward_mean": 0.5, "kl": 0.02},
                                                        "eval_after": {"em_flexible": 0.25, "em_strict": 0.125}}))
    rows = write_summary(tmp_path)
    assert [(r["job"], r["seed"], r["status"]) for r in rows] == [(0, "1", "ok"), (1, "2", "failed")]
    assert rows[0]["em_flexible"] == 0.25 and rows[0]["overrides"] == "seed=1"
    proc = subprocess.run([PY, "-m", "rlhf.report.sweep", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env=child_env())
    assert proc.returncode == 0 and "| 1 | 2 | failed |" in proc.stdout


@pytest.mark.parametrize("launcher,target", [
    ("slurm", "SlurmLauncher"), ("submitit_local_cpu", "LocalLauncher"),
])
def test_launcher_presets_compose(launcher, target):
    register_training_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
    lc = cfg.hydra.launcher
    assert lc._target_.endswith(target) and lc.nodes == 2
    for key in ("gpus_per_node", "timeout_min", "cpus_per_task", "mem_gb", "tasks_per_node"):
        assert key in lc, key
    if launcher == "slurm":
        assert "partition" in lc and lc.gpus_per_node == 1 and lc.timeout_min == 240
    assert "rlhf.report.sweep.SweepSummaryCallback" in str(cfg.hydra.callbacks)
