"""Atomic checkpoints (temp dir + rename, COMPLETE marker) and exact resume state.

Layout of <run_dir>/checkpoints/step_000010/:
  adapter/ (LoRA, peft format)  or  model/ (full weights, transformers format, safetensors)
  value_head.safetensors        (PPO)
  trainer_state.pt              optimizer, scheduler, KL controller, RNG states, data position, step
  COMPLETE                      written last; a directory without it is never picked
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlhf.model.policy import Policy

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_complete(run_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "COMPLETE").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    done = list_complete(run_dir)
    return done[-1][1] if done else None


def save_checkpoint(run_dir: Path, step: int, policy: Policy, tokenizer, trainer_state: Dict[str, Any],
                    keep: int) -> Path:
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=root))
    try:
        write_model_files(tmp, policy, tokenizer)
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / "trainer_state.pt")
        finalize_checkpoint(tmp, final, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep)
    return final


def write_model_files(ckpt_dir: Path, policy: Policy, tokenizer, model_state: Optional[Dict[str, torch.Tensor]] = None,
                      value_head_state: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """The weights part of the layout: adapter/ or model/ (+ tokenizer) and value_head.safetensors.

    model_state / value_head_state replace the live modules' state dicts (DeepSpeed ZeRO-3 passes gathered copies)."""
    target = ckpt_dir / ("adapter" if policy.is_lora else "model")
    extra: Dict[str, Any] = {} if model_state is None else {"state_dict": model_state}
    if policy.is_lora:
        extra["selected_adapters"] = ["default"]  # the actor's; a judge adapter on the same base saves itself
    policy.model.save_pretrained(str(target), safe_serialization=True, **extra)
    if not policy.is_lora:
        tokenizer.save_pretrained(str(target))
    if policy.value_head is not None:
        state = policy.value_head.state_dict() if value_head_state is None else value_head_state
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(ckpt_dir / "value_head.safetensors"))


def finalize_checkpoint(tmp: Path, final: Path, step: int) -> None:
    """COMPLETE marker last, then an atomic rename of the finished temp dir onto step_XXXXXX."""
    (tmp / "COMPLETE").write_text(f"{step}\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, old in list_complete(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_weights_into(policy: Policy, ckpt: Path) -> None:
    if policy.is_lora:
        from peft import set_peft_model_state_dict

        state = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
        set_peft_model_state_dict(policy.model, state)
    else:
        files = sorted((ckpt / "model").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"resume: no model weights in {ckpt / 'model'}")
        state: Dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        result = policy.model.load_state_dict(state, strict=False)
        tied = bool(getattr(policy.model.config, "tie_word_embeddings", False))
        missing = [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        if missing or result.unexpected_keys:
            raise KeyError(f"resume: checkpoint {ckpt} does not match the model (missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]})")
    if policy.value_head is not None:
        policy.value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))


def load_trainer_state(ckpt: Path) -> Dict[str, Any]:
    return torch.load(ckpt / "trainer_state.pt", weights_only=False)


def resolve_resume(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    """null -> None; auto -> newest complete checkpoint in run_dir (or None); a path -> that checkpoint (validated)."""
    if resume is None:
        return None
    if resume == "auto":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            log.info("resume=auto: no complete checkpoint in %s, starting fresh", checkpoint_root(run_dir))
        return ckpt
    path = Path(resume)
    if not (path / "COMPLETE").is_file():
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no COMPLETE marker)")
    return path
