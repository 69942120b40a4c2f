"""One base model, several roles: the actor's LoRA adapter, the reference (all adapters off) and a judge adapter.

A judge that shares the actor's base is an ``AdapterView``: it looks like a model to the judge code (call it, generate,
train/eval, parameters, save_pretrained) and switches the shared peft model to its own adapter for the duration of
each call, then back to the actor's. The switch never changes which parameters train: peft's ``set_adapter`` flips
``requires_grad`` on adapter weights, so the flags are recorded before and restored after.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn as nn
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

log = logging.getLogger(__name__)

ACTOR_ADAPTER = "default"  # peft's name for the first adapter: the actor's
JUDGE_ADAPTER = "judge"


@contextlib.contextmanager
def keep_requires_grad(peft_model: nn.Module) -> Iterator[None]:
    """Restore every parameter's requires_grad flag on exit (peft's set_adapter/load_adapter/add_adapter flip them);
    parameters created inside the block end frozen."""
    flags: Dict[nn.Parameter, bool] = {p: p.requires_grad for p in peft_model.parameters()}
    try:
        yield
    finally:
        for p in peft_model.parameters():
            p.requires_grad_(flags.get(p, False))


def adapter_parameters(peft_model: nn.Module, adapter: str) -> Iterator[nn.Parameter]:
    """The parameters of one named LoRA adapter (peft names them ``...lora_A.<adapter>.weight``)."""
    tag = f".{adapter}."
    return (p for n, p in peft_model.named_parameters() if ".lora_" in n and tag in n)


@torch.no_grad()
def copy_adapter_weights(peft_model: nn.Module, src: str, dst: str) -> int:
    """Sets LoRA adapter ``dst``'s weights to adapter ``src``'s; both must have the same rank, alpha, targets and
    shapes (ValueError naming the first difference). Returns the number of tensors copied."""
    a, b = peft_model.peft_config[src], peft_model.peft_config[dst]
    if (a.r, a.lora_alpha) != (b.r, b.lora_alpha):
        raise ValueError(f"adapter r={a.r} alpha={a.lora_alpha} ({src!r}) but {dst!r} has r={b.r} alpha={b.lora_alpha}")
    params = dict(peft_model.named_parameters())
    pairs = [(n, n.replace(f".{src}.", f".{dst}.")) for n in params if ".lora_" in n and f".{src}." in n]
    for s_name, d_name in pairs:
        if d_name not in params or params[s_name].shape != params[d_name].shape:
            raise ValueError(f"adapter {s_name} {tuple(params[s_name].shape)} has no match in {dst!r}")
    for s_name, d_name in pairs:
        params[d_name].copy_(params[s_name])
    return len(pairs)


class AdapterView:
    """A named adapter of a shared peft model (``adapter=None``: the base with every adapter disabled)."""

    def __init__(self, peft_model: nn.Module, adapter: Optional[str]):
        if adapter is not None and adapter not in peft_model.peft_config:
            raise KeyError(f"adapter {adapter!r} is not loaded (have {sorted(peft_model.peft_config)})")
        self.peft = peft_model
        self.adapter = adapter
        self._depth = 0

    @property
    def config(self) -> Any:
        return self.peft.base_model.model.config

    @contextlib.contextmanager
    def active(self, trainable: bool = False) -> Iterator[None]:
        """Route forwards through this adapter; re-entrant. ``trainable``: its weights get gradients inside."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        previous = self.peft.active_adapter
        self._depth = 1
        try:
            with keep_requires_grad(self.peft):
                if self.adapter is None:
                    with self.peft.disable_adapter():
                        yield
                else:
                    self.peft.set_adapter(self.adapter, inference_mode=not trainable)
                    try:
                        yield
                    finally:
                        self.peft.set_adapter(previous, inference_mode=True)
        finally:
            self._depth = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.active():
            return self.peft(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.active():
            return self.peft.generate(*args, **kwargs)

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(()) if self.adapter is None else adapter_parameters(self.peft, self.adapter)

    def train(self, mode: bool = True) -> "AdapterView":
        self.peft.train(mode)
        return self

    def eval(self) -> "AdapterView":
        return self.train(False)

    def to(self, *args: Any, **kwargs: Any) -> "AdapterView":
        return self  # the shared model is placed by its owner (the trainer)

    def save_pretrained(self, path: str | Path, **_: Any) -> None:
        """This adapter alone, in the layout of a single-adapter peft save (loadable with PeftModel.from_pretrained)."""
        if self.adapter is None:
            raise ValueError("the adapter-free base has nothing to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.peft, adapter_name=self.adapter)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        self.peft.peft_config[self.adapter].save_pretrained(str(path))


def model_scope(model: Any, trainable: bool = False) -> contextlib.AbstractContextManager:
    """Hold a shared model's adapter for a whole block of calls (a no-op for a plain model)."""
    return model.active(trainable) if isinstance(model, AdapterView) else contextlib.nullcontext()


def add_judge_adapter(peft_model: nn.Module, peft_cfg: Any, seed: int) -> AdapterView:
    """A fresh (frozen until trained) judge adapter on the actor's base; the actor's adapter stays the active one."""
    if JUDGE_ADAPTER in peft_model.peft_config:
        raise ValueError(f"the actor model already has a {JUDGE_ADAPTER!r} adapter")
    with keep_requires_grad(peft_model), torch.random.fork_rng():  # the new (judge) weights end frozen
        torch.manual_seed(seed)
        peft_model.add_adapter(JUDGE_ADAPTER, peft_cfg)
    return AdapterView(peft_model, JUDGE_ADAPTER)


def load_judge_adapter(peft_model: nn.Module, path: str | Path) -> AdapterView:
    """A saved lora_judge adapter loaded next to the actor's, frozen."""
    with keep_requires_grad(peft_model):
        peft_model.load_adapter(str(path), adapter_name=JUDGE_ADAPTER, is_trainable=False)
        if peft_model.active_adapter != ACTOR_ADAPTER:
            peft_model.set_adapter(ACTOR_ADAPTER)
    return AdapterView(peft_model, JUDGE_ADAPTER)
