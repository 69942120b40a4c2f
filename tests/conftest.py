"""Shared by every test under tests/ (unit/, e2e/ and tests/test_architecture.py).

- tests/ goes on sys.path, so the helper modules here (`launch`, `helpers`) import as top-level modules from any
  subfolder. Test files that import a sibling test module (`from test_judge_reward import make_cfg`) keep doing so:
  pytest puts each test file's own folder on sys.path before importing it (the default "prepend" import mode), which
  is also why every test file's base name must be unique across the tree.
- Fixtures: `root` (the repository), `fixtures_dir` (tests/fixtures), `tokenizer` (the embedded model's tokenizer,
  which the tiny random model uses too; built once per session, do not mutate it), and the factories `tiny_lm` and
  `tiny_policy`, which build a fresh tiny random model on every call (see tests/helpers.py for their parameters).

Nothing heavy is imported at module level: torch must not be imported before a test module sets its environment
(tests/unit/rollout/test_vllm_engine.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root (cwd for `python -m rlhf.train` / `rlhf.evaluate` subprocesses)."""
    return helpers.ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: small data files (GSM8K, HH-RLHF, RewardBench samples, score and prediction files)."""
    return helpers.FIXTURES


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer, as `model=tiny_random` loads it (pad token set, left padding). Shared by the
    whole session: do not change its attributes in a test."""
    from rlhf.config import ModelConfig
    from rlhf.model.load import load_tokenizer

    return load_tokenizer(ModelConfig(source="tiny_random"))


@pytest.fixture(scope="session")
def tiny_lm():
    """Factory: `tiny_lm(seed=0, dtype="float32")` -> (model, tokenizer), a fresh tiny random causal LM per call."""
    return helpers.tiny_lm

@pytest.fixture(scope="module")
def tiny(tiny_lm):
    """(model, tokenizer): a tiny random LM with larger weights than the 0.02 init (N(0, 0.15^2), seeded), so a
    judge's verdict logits differ between items and criteria. Module-scoped: judge tests share one per file."""
    import torch

    model, tok = tiny_lm(seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_policy():
    """Factory: `tiny_policy(lora=False, value_head=False, seed=0)` -> (Policy, tokenizer), fresh per call. lora=True
    is a rank-4 adapter (alpha 8, no dropout); a LoraConfig picks another adapter."""
    return helpers.tiny_policy
