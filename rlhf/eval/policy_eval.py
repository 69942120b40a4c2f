"""The model-based `rlhf.evaluate task=gsm8k`: greedy exact match of a model (+ trained weights) on a math test split."""

from __future__ import annotations

from pathlib import Path

import torch

from peft import PeftModel
from transformers import AutoModelForCausalLM

from rlhf.backend.checkpoint import load_weights_into
from rlhf.model.device import resolve_device
from rlhf.model.load import load_causal_lm
from rlhf.model.policy import build_policy
from rlhf.rollout.hf_engine import HFEngine
from rlhf.task.math import MathTask


def load_policy_engine(cfg) -> tuple[HFEngine, object]:
    """(a transformers rollout engine on cfg.model + cfg.checkpoint's trained weights, its tokenizer). checkpoint: a
    training checkpoint (checkpoints/step_N), or an SFT output (a LoRA adapter or a full model dir); none: the base."""
    device = resolve_device(cfg.hardware)
    model, tok = load_causal_lm(cfg.model, cfg.hardware.dtype, seed=cfg.seed)
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt is not None and (ckpt / "adapter_config.json").is_file():  # a bare LoRA adapter (`python -m rlhf.sft`)
        if not (ckpt / "adapter_model.safetensors").is_file():
            raise ValueError(f"checkpoint: {ckpt} has no adapter_model.safetensors (pickled adapters are not loaded)")
        model = PeftModel.from_pretrained(model, str(ckpt))
    elif ckpt is not None and (ckpt / "config.json").is_file():  # a full model dir (`rlhf.sft sft.lora=false`)
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=next(model.parameters()).dtype,
                                                     use_safetensors=True)
    elif ckpt is not None:
        lora = (ckpt / "adapter").is_dir()
        cfg.model.lora.enabled = lora
        policy = build_policy(model, cfg.model, value_head=(ckpt / "value_head.safetensors").is_file())
        load_weights_into(policy, ckpt)
        model = policy.model
    model.to(device).eval()
    return HFEngine(model, tok, device, cfg.dataset.max_prompt_tokens), tok


def run_model_task(cfg) -> tuple[dict, str]:
    """`python -m rlhf.evaluate task=gsm8k [checkpoint=DIR]`: greedy EM of a model (+ trained weights) on a test
    split."""
    engine, tok = load_policy_engine(cfg)
    task = MathTask(cfg.dataset)
    items = task.items("test")
    if cfg.limit:
        items = items[: cfg.limit]
    with torch.no_grad():
        out = task.evaluate(engine, tok, items, cfg.generation.eval_batch_size, cfg.generation.eval_max_new_tokens,
                            progress=True)
    res = {**out.summary, "examples": out.examples, "task": "gsm8k"}
    md = ("| n | EM strict | EM flexible |\n|---|---|---|\n"
          f"| {res['n']} | {100 * res['em_strict']:.1f} % | {100 * res['em_flexible']:.1f} % |\n")
    return res, md
