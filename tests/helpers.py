"""Paths, tiny-model builders and input builders shared across the test tree (unit/ and e2e/) and by
tests/ds_accumulation.py, which runs as a script outside pytest.

tests/ is on sys.path (tests/conftest.py puts it there; the script inserts it itself), so `from helpers import ...`
works from any subfolder. Inside pytest, prefer the fixtures of tests/conftest.py (`tiny_lm`, `tiny_policy`,
`tokenizer`, `root`, `fixtures_dir`); the plain functions and constants are for module-level code (parametrize
lists, helpers called outside a test) and for the script.

torch / transformers / rlhf are imported inside the functions: conftest.py imports this module before any test
module, and tests/unit/rollout/test_vllm_engine.py sets thread and vLLM environment variables before torch is first
imported.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf.config import LoraConfig

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"


# ----------------------------------------------------------------------------------------------- tiny random models
def tiny_lm(seed: int = 0, dtype: str = "float32"):
    """(model, tokenizer): the tiny random Llama of ModelConfig(source="tiny_random"), weights drawn from `seed`."""
    from rlhf.config import ModelConfig
    from rlhf.model.load import load_causal_lm

    return load_causal_lm(ModelConfig(source="tiny_random"), dtype, seed=seed)


def tiny_policy(lora: bool | LoraConfig = False, value_head: bool = False, seed: int = 0):
    """(Policy, tokenizer) on the tiny random model: `lora=True` is a rank-4 adapter (alpha 8, no dropout) on the
    default target modules; pass a LoraConfig for another adapter; `lora=False` is a full fine-tune with a frozen
    reference copy. `value_head` adds the PPO critic head (zero-initialised)."""
    from rlhf.config import LoraConfig, ModelConfig
    from rlhf.model.load import load_causal_lm
    from rlhf.model.policy import build_policy

    lora_cfg = lora if isinstance(lora, LoraConfig) else LoraConfig(enabled=lora, r=4, alpha=8, dropout=0.0)
    cfg = ModelConfig(source="tiny_random", lora=lora_cfg)
    model, tok = load_causal_lm(cfg, seed=seed)
    return build_policy(model, cfg, value_head=value_head), tok


# --------------------------------------------------------------------- broken inputs for rlhf.train (preflight + CLI)
def write_bad_inputs(d: Path) -> Path:
    """A folder of broken inputs for `rlhf.train`, one per class (tests/unit/test_train_inputs.py and its CLI part,
    tests/e2e/test_train_inputs_cli.py)."""
    import torch
    from safetensors.torch import save_file

    (d / "empty.jsonl").write_text("")
    (d / "binary.jsonl").write_bytes(bytes(range(128, 256)) * 3)
    (d / "no_answer.jsonl").write_text('{"question": "q1", "answer": "1\\n#### 1"}\n{"question": "q2"}\n')
    (d / "bad_json.jsonl").write_text('{"question": "q1", "answer": "1\\n#### 1"}\n{"question": \n')
    (d / "demos_missing_field.jsonl").write_text('{"prompt": "p", "chosen": "c"}\n')
    (d / "model_no_config").mkdir()
    ck = d / "judge_ckpt"
    ck.mkdir()
    (ck / "judge_meta.json").write_text("{}")
    save_file({"w": torch.zeros(64, 64)}, str(ck / "adapter_model.safetensors"))
    data = (ck / "adapter_model.safetensors").read_bytes()
    (ck / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])  # truncated copy
    (d / "rm_no_meta").mkdir()
    resume = d / "resume_truncated"
    (resume / "model").mkdir(parents=True)
    (resume / "COMPLETE").write_text("2\n")
    save_file({"w": torch.zeros(64, 64)}, str(resume / "model" / "model.safetensors"))
    (resume / "model" / "model.safetensors").write_bytes((resume / "model" / "model.safetensors").read_bytes()[:100])
    (d / "resume_incomplete").mkdir()
    return d


# --------------------------------------------------------------------------------------------- booby-trapped pickles
# (tests/unit/backend/test_checkpoint_state.py, and its CLI check in tests/e2e/test_resume.py)
class SystemTrap:
    """Unpickling runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenTrap:
    """Unpickling creates `marker` with open()."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


TRAPS = {"os.system": SystemTrap, "builtins.open": OpenTrap}


def trapped_checkpoint(tmp_path: Path, trap: str) -> tuple[Path, Path]:
    """A complete checkpoint whose (old-format) trainer_state.pt would create `marker` when unpickled."""
    marker = tmp_path / f"MARKER-{trap}"
    ckpt = tmp_path / "old_run" / "checkpoints" / "step_000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(pickle.dumps({"step": 2, "rng": TRAPS[trap](marker)}, protocol=2))
    (ckpt / "COMPLETE").write_text("2\n")
    return ckpt, marker


def legacy_message(ckpt: Path) -> str:
    return (f"resume: {ckpt / 'trainer_state.pt'} is a pickle (written by an older version); pickles can run code, "
            "so it is not loaded. Start a fresh run or ")


def algo_cfg(name: str, **kw):
    """The registered schema of algorithm `name` (rlhf/algo/<name>.py) with the given keys."""
    from rlhf.algo.registry import load_algorithms

    return load_algorithms()[name].schema(name=name, **kw)
