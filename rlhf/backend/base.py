"""The training backend: everything about *how* the policy is trained that the RL algorithm must not know.

A backend owns the optimizer and the warm-up schedule, runs backward (with gradient accumulation over micro-batches),
clips the gradient norm and skips a step whose loss or gradient is not finite, provides the context the rollout engine
generates in (ZeRO-3 gathers the sharded weights there), and saves and restores checkpoints (weights, optimizer, RNG).
`rlhf.algo.step.update` drives it through the small `UpdateHooks` protocol it defines (backward / discard / step /
all_finite / all_sum); the trainer calls `model`, `generation`, `save` and `load`. Two implementations:

  TorchBackend      one process, plain torch (rlhf/backend/base.py)
  DeepSpeedBackend  ZeRO-2 / ZeRO-3 (+ CPU offload) over any number of ranks (rlhf/backend/zero.py)

They build the same optimizer (AdamW, betas 0.9/0.95, eps 1e-8, actor and critic learning rates as param groups) and
the same linear warm-up (`optimizer_groups`, `warmup_schedule`), so a plain run and a 1-rank ZeRO run take the same
steps.
"""

from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional

import numpy as np
import torch

from rlhf.backend.checkpoint import (
    load_trainer_state,
    load_weights_into,
    save_checkpoint,
)
from rlhf.config import AlgoConfig, Config
from rlhf.model.policy import Policy

SumFn = Callable[[torch.Tensor], torch.Tensor]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_torch(cfg: Config) -> None:
    """hardware.num_threads (0: torch's default) and every RNG seeded from cfg.seed."""
    if cfg.hardware.num_threads > 0:
        torch.set_num_threads(cfg.hardware.num_threads)
    seed_everything(cfg.seed)


def optimizer_groups(policy: Policy, algo: AlgoConfig) -> List[Dict[str, Any]]:
    """The actor's trainable parameters at algo.lr and, for PPO, the value head's at algo.critic_lr."""
    groups: List[Dict[str, Any]] = [{"params": list(policy.actor_parameters()), "lr": algo.lr, "name": "actor"}]
    critic = list(policy.critic_parameters())
    if critic:
        groups.append({"params": critic, "lr": algo.critic_lr, "name": "critic"})
    return groups


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over algo.warmup_steps optimizer steps, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0)


def trainable_params(policy: Policy) -> List[torch.nn.Parameter]:
    return list(policy.actor_parameters()) + list(policy.critic_parameters())


class TrainingBackend:
    """The interface (and the plain-torch defaults that the DeepSpeed backend overrides)."""

    optimizer: Any
    scheduler: Any
    all_sum: Optional[SumFn] = None  # sums a tensor over data-parallel ranks (None: one process)
    world_size: int = 1

    @property
    def model(self) -> Any:
        """What the algorithm calls: policy(input_ids, attention_mask, prompt_len, temperature, want_entropy) and
        .ref_logprobs(...)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ UpdateHooks (rlhf.algo.step)
    def backward(self, loss: torch.Tensor, accumulate: bool, is_last: bool) -> None:
        raise NotImplementedError

    def discard(self, loss: torch.Tensor) -> None:
        """Drop the gradients accumulated in this minibatch (a later micro-batch's loss was not finite)."""
        raise NotImplementedError

    def step(self) -> Optional[float]:
        """Clip, then apply one optimizer step and one schedule step; the gradient norm, or None when the step was
        skipped (non-finite gradient). Gradients are zeroed either way."""
        raise NotImplementedError

    def all_finite(self, t: torch.Tensor) -> bool:
        return bool(torch.isfinite(t).all())

    # ------------------------------------------------------------------------------------------------- trainer
    def generation(self) -> ContextManager[None]:
        """The context rollouts and evaluations generate in (with the policy itself: hardware.rollout=hf)."""
        return contextlib.nullcontext()

    def gathered(self) -> ContextManager[None]:
        """Full (unpartitioned) weights inside the block, read-only: what a weight sync to vLLM reads. Collective under
        ZeRO-3 (every rank enters it)."""
        return contextlib.nullcontext()

    def save(self, run_dir: Path, step: int, tokenizer, trainer_state: Dict[str, Any], keep: int) -> Path:
        raise NotImplementedError

    def load(self, ckpt: Path) -> Dict[str, Any]:
        """Restores weights and optimizer from ckpt; returns the rest of the trainer state (with "rng" and "step")."""
        raise NotImplementedError

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


class TorchBackend(TrainingBackend):
    """One process, plain torch: AdamW over the trainable parameters, torch's grad-norm clipping."""

    def __init__(self, policy: Policy, algo: AlgoConfig):
        self.policy = policy
        self.max_grad_norm = algo.max_grad_norm
        self.params = trainable_params(policy)
        self.optimizer = torch.optim.AdamW(optimizer_groups(policy, algo), weight_decay=algo.weight_decay,
                                           betas=(0.9, 0.95), eps=1e-8)
        self.scheduler = warmup_schedule(self.optimizer, algo.warmup_steps)

    @property
    def model(self) -> Policy:
        return self.policy

    def backward(self, loss: torch.Tensor, accumulate: bool, is_last: bool) -> None:
        loss.backward()

    def discard(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> Optional[float]:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm if self.max_grad_norm > 0 else math.inf)
        if not self.all_finite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save(self, run_dir: Path, step: int, tokenizer, trainer_state: Dict[str, Any], keep: int) -> Path:
        state = {**trainer_state, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        return save_checkpoint(run_dir, step, self.policy, tokenizer, state, keep)

    def load(self, ckpt: Path) -> Dict[str, Any]:
        load_weights_into(self.policy, ckpt)
        state = load_trainer_state(ckpt)
        if state.get("optimizer") is None:
            raise ValueError(f"resume: {ckpt} was written by DeepSpeed (optimizer partitions in deepspeed/); resume it "
                             "with the same hardware preset and world size")
        self.optimizer.load_state_dict(state.pop("optimizer"))
        self.scheduler.load_state_dict(state.pop("scheduler"))
        return state
