"""Value checks that types cannot express (ranges, choices, combinations of keys), and the DictConfig -> dataclass
step every entry point runs: each bad value is one '<dotted key>: ...' line of a ConfigError."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from rlhf.config.schema import (
    Config,
    ConfigError,
    DatasetConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    TinyModelConfig,
)

CHOICES = {
    "model.source": ("embedded", "hf", "tiny_random"),
    "dataset.name": ("synthetic_math", "gsm8k", "synthetic_chat", "synthetic_prefs", "hh_rlhf", "hh_rationales",
                     "rewardbench", "rewardbench2"),
    "reward.name": ("exact_match", "bt_rm", "rubric_judge", "lora_judge", "self_reward", "routed"),
    "reward.route_judge": ("rubric_judge", "lora_judge"),
    "reward.route_by": ("margin", "ensemble", "random"),
    "reward.mode": ("strict", "flexible"),
    "reward.judge_signal": ("pointwise", "pairwise"),
    "reward.robust": ("none", "r3m", "adaptive"),
    "reward.ensemble_agg": ("mean", "lcb"),
    "judge.mode": ("pairwise", "pointwise"),
    "judge.reference": ("none", "answer", "solution"),
    "hardware.device": ("cpu", "cuda", "auto"),
    "hardware.dtype": ("float32", "bfloat16", "float16"),
    "hardware.rollout": ("hf", "vllm"),
    "hardware.deepspeed_stage": (0, 2, 3),
    "logging.wandb": ("offline", "online", "disabled"),
}

POSITIVE = [
    "model.lora.r", "model.lora.alpha", "dataset.num_train", "dataset.num_test", "dataset.max_prompt_tokens",
    "judge.max_len", "judge.train_steps", "judge.batch_size", "judge.lr", "judge.eval_batch_size",
    "judge.rationale_max_new_tokens", "judge.policy_samples", "sft.steps", "sft.batch_size", "sft.lr", "sft.max_len",
    "sft.eval_max_new_tokens",
    "generation.max_new_tokens", "generation.eval_batch_size",
    "generation.eval_max_new_tokens", "steps", "keep_checkpoints", "max_bad_steps", "hardware.vllm_sync_timeout_s",
    "hardware.dist_timeout_s", "model.tiny.hidden_size", "model.tiny.intermediate_size", "model.tiny.num_hidden_layers",
    "model.tiny.num_attention_heads", "model.tiny.num_key_value_heads", "model.tiny.max_position_embeddings",
]
NON_NEGATIVE = [
    "model.lora.dropout", "judge.num_demos", "judge.margin", "judge.lora_layers", "judge.heldout_pairs",
    "judge.policy_pairs",
    "generation.temperature", "generation.top_k", "max_train_seconds", "eval_every", "save_every", "num_eval",
    "hardware.num_threads", "reward.format_bonus", "seed", "dataset.seed", "judge.demo_seed",
    "sft.num_train", "sft.num_eval", "sft.eval_em", "reward.ensemble", "reward.ensemble_lcb_beta",
    "hardware.vllm_kv_cache_gb",
]
UNIT_INTERVAL = ["generation.top_p", "hardware.vllm_gpu_memory_utilization", "dataset.label_noise", "reward.route_budget",
                 "judge.master_key_negatives", "judge.policy_fraction"]


_ABSENT = object()


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part, _ABSENT)
        if cfg is _ABSENT:
            return _ABSENT
    return cfg


def _non_finite(obj: Any, prefix: str = "") -> List[str]:
    """Dotted keys of every float in a (nested) dataclass that is inf or nan: never a valid setting."""
    bad: List[str] = []
    if is_dataclass(obj):
        for f in fields(obj):
            bad += _non_finite(getattr(obj, f.name), f"{prefix}{f.name}.")
    elif isinstance(obj, float) and not math.isfinite(obj):
        bad.append(prefix[:-1])
    return bad


def config_errors(cfg: Any) -> List[str]:
    """Every value that types cannot reject, as '<dotted key>: <what is wrong>' lines (empty: the config is fine).

    Works on the training Config and on any config object that holds some of its groups (rlhf.evaluate's): keys whose
    group the object does not have are skipped."""
    errors: List[str] = []
    has = lambda key: _get(cfg, key) is not _ABSENT  # noqa: E731
    for key in _non_finite(cfg):
        errors.append(f"{key}: must be a finite number, got {_get(cfg, key)!r}")
    bad_keys = {e.split(":")[0] for e in errors}
    for key, allowed in CHOICES.items():
        if has(key) and _get(cfg, key) not in allowed:
            errors.append(f"{key}: {_get(cfg, key)!r} is not one of {list(allowed)}")
    for key in POSITIVE:
        if has(key) and key not in bad_keys and not _get(cfg, key) > 0:
            errors.append(f"{key}: must be > 0, got {_get(cfg, key)!r}")
    for key in NON_NEGATIVE:
        if has(key) and key not in bad_keys and _get(cfg, key) < 0:
            errors.append(f"{key}: must be >= 0, got {_get(cfg, key)!r}")
    for key in UNIT_INTERVAL:
        if has(key) and key not in bad_keys and not 0.0 <= _get(cfg, key) <= 1.0:
            errors.append(f"{key}: must be in [0, 1], got {_get(cfg, key)!r}")
    if has("generation") and "generation.top_p" not in bad_keys and cfg.generation.top_p == 0:
        errors.append("generation.top_p: must be in (0, 1]; 0 keeps no token (use 1.0 to disable nucleus sampling)")
    if has("judge") and not 0 <= cfg.judge.num_demos <= 6:
        errors.append(f"judge.num_demos: must be between 0 and 6, got {cfg.judge.num_demos}")
    if has("model"):
        t = cfg.model.tiny
        if t.num_attention_heads > 0 and t.hidden_size % t.num_attention_heads:
            errors.append(f"model.tiny.num_attention_heads: {t.num_attention_heads} does not divide "
                          f"model.tiny.hidden_size = {t.hidden_size}")
        elif t.num_key_value_heads > 0 and t.num_attention_heads % t.num_key_value_heads:
            errors.append(f"model.tiny.num_key_value_heads: {t.num_key_value_heads} does not divide "
                          f"model.tiny.num_attention_heads = {t.num_attention_heads}")
    if has("algo"):  # each algorithm's schema checks its own keys
        errors += [e for e in cfg.algo.errors() if e.split(":")[0] not in bad_keys]
        if has("generation") and has("model") and has("hardware"):
            errors += cfg.algo.run_errors(cfg)
    if has("dataset"):
        errors += _dataset_errors(cfg.dataset)
    if has("reward") and "reward.robust" not in bad_keys:
        errors += _robust_errors(cfg.reward)
    if has("resume") and cfg.resume not in (None, "auto") and not str(cfg.resume).strip():
        errors.append("resume: empty string; use null, auto or a checkpoint path")
    if has("hardware") and cfg.hardware.dtype == "float16" and cfg.hardware.device == "cpu":
        errors.append("hardware.dtype: float16 is not supported on cpu; use float32 or bfloat16")
    if (has("judge") and has("reward") and cfg.reward.name in ("rubric_judge", "lora_judge")
            and cfg.reward.judge_signal == "pairwise" and cfg.judge.reference != "none"):
        errors.append(f"reward.judge_signal: pairwise compares each reply with the reference, which "
                      f"judge.reference={cfg.judge.reference} already shows the judge (the reference would judge "
                      f"itself); use reward.judge_signal=pointwise or judge.reference=none")
    if (has("reward") and has("algo") and cfg.reward.name == "routed"
            and getattr(cfg.algo, "samples_per_prompt", 1) < 2):
        errors.append(f"reward.name: routed compares replies to the same prompt in pairs; "
                      f"algo.samples_per_prompt={getattr(cfg.algo, 'samples_per_prompt', 1)} needs to be >= 2")
    if has("reward") and has("model") and has("hardware") and has("sft") and cfg.reward.init_actor_from_sft:
        if cfg.reward.name != "self_reward":
            errors.append(f"reward.init_actor_from_sft: only reward=self_reward has an SFT model; reward.name is "
                          f"{cfg.reward.name}")
        elif not cfg.model.lora.enabled or cfg.hardware.deepspeed_stage or not cfg.sft.lora:
            errors.append("reward.init_actor_from_sft: needs a LoRA actor (model.lora.enabled=true), a LoRA SFT "
                          "adapter (sft.lora=true) and no DeepSpeed (both adapters on one base)")
    if has("judge") and has("hardware") and has("reward") and cfg.judge.vllm:
        if cfg.reward.name not in ("rubric_judge", "lora_judge"):
            errors.append(f"judge.vllm: vLLM scores the rubric judge (the frozen base) or the lora_judge (its adapter "
                          f"as a LoRA request); reward.name is {cfg.reward.name}")
        elif cfg.hardware.rollout != "vllm" or not cfg.hardware.vllm_lora_sync:
            errors.append("judge.vllm: needs hardware.rollout=vllm with hardware.vllm_lora_sync=true (the engine "
                          "then holds the base weights the judge reads)")
    if has("hardware") and has("model") and cfg.hardware.vllm_lora_sync:
        if cfg.hardware.rollout != "vllm":
            errors.append("hardware.vllm_lora_sync: adapter-only sync is for hardware.rollout=vllm")
        elif not cfg.model.lora.enabled:
            errors.append("hardware.vllm_lora_sync: needs a LoRA actor (model.lora.enabled=true); a fully fine-tuned "
                          "actor has no adapter to push")
    if has("judge") and has("reward") and has("dataset") and cfg.judge.policy_pairs > 0:
        errors += (_policy_pair_errors(cfg) if has("algo") else
                   ["judge.policy_pairs: on-policy pairs are sampled from the actor of a training run (rlhf.train); "
                    "set it to 0 here"])
    if has("judge") and has("reward") and cfg.reward.ensemble > 1 and not cfg.judge.lora.enabled:
        errors.append("reward.ensemble: the members are LoRA adapters on one base; judge.lora.enabled=false would "
                      "need K full copies")
    if has("judge") and has("reward") and has("algo") and cfg.judge.share_base:
        why = share_base_obstacle(cfg)
        if why:
            errors.append(f"judge.share_base: true is not possible here: {why}")
    return errors


# the math datasets (rlhf/dataset/math_data.py reads them; rlhf.evaluate and the checks here refuse the others)
MATH_DATASETS = ("synthetic_math", "gsm8k")


def _policy_pair_errors(cfg: Any) -> List[str]:
    """judge.policy_pairs: the actor's samples graded against reference answers train a judge/RM inside the run."""
    if cfg.reward.name not in ("lora_judge", "bt_rm", "routed"):
        return [f"judge.policy_pairs: on-policy pairs train a lora_judge / bt_rm in the run; reward.name is "
                f"{cfg.reward.name}"]
    if cfg.reward.checkpoint:
        return ["judge.policy_pairs: reward.checkpoint loads a trained judge/RM, so nothing is trained on the pairs; "
                "drop one of them"]
    if cfg.dataset.name not in MATH_DATASETS:
        return [f"judge.policy_pairs: replies are graded against reference answers, which a math dataset has "
                f"({', '.join(MATH_DATASETS)}); dataset.name is {cfg.dataset.name}"]
    if not cfg.judge.policy_fraction > 0:
        return ["judge.policy_fraction: must be > 0 when judge.policy_pairs > 0"]
    return []


def _robust_errors(r: "RewardConfig") -> List[str]:
    """reward.robust and its keys: only a bt_rm trained in the run has a loss to make robust."""
    errors = []
    if not 0.0 < r.r3m_lambda < 1.0:
        errors.append(f"reward.r3m_lambda: must be in (0, 1), got {r.r3m_lambda!r}")
    if not 0.0 <= r.adaptive_rho < math.log(2.0):
        errors.append(f"reward.adaptive_rho: must be in [0, log 2 = 0.693), got {r.adaptive_rho!r}")
    if not 0.0 < r.adaptive_tau_min <= r.adaptive_tau_max:
        errors.append(f"reward.adaptive_tau_min: need 0 < adaptive_tau_min <= adaptive_tau_max, got "
                      f"{r.adaptive_tau_min!r}..{r.adaptive_tau_max!r}")
    if r.name == "routed" and r.route_by == "ensemble" and r.ensemble < 2:
        errors.append(f"reward.route_by: ensemble routing reads the disagreement of reward.ensemble >= 2 heads; "
                      f"reward.ensemble is {r.ensemble}")
    if r.ensemble > 1 and r.name not in ("bt_rm", "routed"):
        errors.append(f"reward.ensemble: an ensemble of reward heads is a bt_rm option; reward.name is {r.name}")
    if r.robust != "none" and r.name not in ("bt_rm", "routed"):
        errors.append(f"reward.robust: {r.robust} is a bt_rm training loss; reward.name is {r.name}")
    elif r.robust != "none" and r.checkpoint:
        errors.append(f"reward.robust: {r.robust} changes how the RM is trained, but reward.checkpoint loads a trained "
                      "one; drop one of them")
    return errors


# datasets that are generated here and read no file: a dataset.path for them would be silently ignored
GENERATED_DATASETS = ("synthetic_math", "synthetic_chat", "synthetic_prefs")


def _dataset_errors(d: "DatasetConfig") -> List[str]:
    errors: List[str] = []
    if d.min_steps < 1 or d.max_steps < d.min_steps:
        errors.append(f"dataset.max_steps: need 1 <= min_steps <= max_steps, got {d.min_steps}..{d.max_steps}")
    if d.min_number < 0 or d.max_number <= d.min_number:
        errors.append(f"dataset.max_number: need 0 <= min_number < max_number, got {d.min_number}..{d.max_number}")
    bad_ops = set(d.operations) - {"add", "sub", "mul", "div"}
    if bad_ops or not d.operations:
        errors.append(f"dataset.operations: unknown {sorted(bad_ops)}; allowed add, sub, mul, div")
    if d.path and d.name in GENERATED_DATASETS:
        errors.append(f"dataset.path: dataset {d.name} is generated here and reads no file; drop dataset.path or pick a "
                      "file-backed dataset (gsm8k, hh_rlhf, hh_rationales, rewardbench)")
    return errors


def validate(cfg: Any) -> Any:
    """Checks values that types cannot express. Raises ConfigError with every bad value, one '<key>: ...' per line."""
    errors = config_errors(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def share_base_obstacle(cfg: Config) -> Optional[str]:
    """Why the judge cannot run on the actor's base model in this config (None: it can)."""
    if cfg.reward.name not in ("rubric_judge", "lora_judge"):
        return f"reward={cfg.reward.name} has no judge on the actor's base (rubric_judge and lora_judge do)"
    if cfg.hardware.deepspeed_stage:
        return "hardware.deepspeed_stage > 0 shards the actor's weights; the judge needs a separate copy"
    if cfg.reward.name == "lora_judge" and not cfg.model.lora.enabled:
        return "model.lora.enabled=false: a lora_judge adapter can only sit next to a LoRA actor"
    return None


def model_config_from_dict(d: Dict[str, Any]) -> ModelConfig:
    """A ModelConfig recorded as a plain dict (a saved judge/RM's meta file) -> the dataclass."""
    d = dict(d)
    lora, tiny = LoraConfig(**d.pop("lora", {})), TinyModelConfig(**d.pop("tiny", {}))
    return ModelConfig(**d, lora=lora, tiny=tiny)


def to_config(cfg: DictConfig | Config) -> Config:
    """DictConfig (from Hydra) -> validated Config dataclass instance."""
    obj = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    assert is_dataclass(obj)
    validate(obj)
    if getattr(obj.algo, "loss_norm_tokens", None) == 0:  # Dr. GRPO's constant: the generation budget
        obj.algo.loss_norm_tokens = obj.generation.max_new_tokens
    return obj


def as_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(x) for x in obj]
    return obj
