"""Helpers shared by the resume / sweep / distributed tests: launching tiny `rlhf.train` runs and reading their outputs.

Every child process runs with one intra-op thread (OMP_NUM_THREADS=1, hardware.num_threads=1): on the 2-core CI box
a multi-threaded torch process next to other busy processes spends most of its time spinning in OpenMP barriers
(a 2-step tiny run took 124 s instead of 16 s), and a fixed thread count keeps CPU kernels bitwise reproducible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = [
    "model=tiny_random", "logging.wandb=disabled", "logging.progress=false", "logging.plots=false", "num_eval=4",
    "generation.max_new_tokens=12", "generation.eval_max_new_tokens=12", "dataset.num_train=64", "dataset.num_test=8",
    "hardware.num_threads=1",
]
# the tiny model with vLLM-compatible attention shapes (vLLM's CPU attention needs a head size it supports)
VLLM_SHAPES = ["model.tiny.hidden_size=128", "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1"]
# metrics that measure time, not learning: excluded from equality checks
TIMING = ("time/", "step_seconds", "tokens_per_s", "gen_tokens_per_s")


def child_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="0", **extra)
    return env


def train_cmd(run_dir: Path, *overrides: str) -> List[str]:
    return [PY, "-m", "rlhf.train", f"hydra.run.dir={run_dir}", *TINY, *overrides]


def run_train(run_dir: Path, *overrides: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(run_dir, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=child_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def metric_rows(run_dir: Path) -> List[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def learning_rows(run_dir: Path) -> List[dict]:
    """metrics.jsonl without the timing keys (everything else must be reproducible)."""
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in metric_rows(run_dir)]
