"""The LoRA judge: the rubric judge with a rank-r LoRA adapter trained on preference pairs; the base stays frozen.

Training data per pair (pairwise mode): both presentation orders, each supervised with cross-entropy on the correct
verdict token ("A" when chosen is shown first, "B" otherwise); pointwise mode: chosen -> the top score token,
rejected -> the bottom one. With judge.use_rationales and a rationale column, the target continues after the verdict
with "\\nReason: <rationale><eos>" — the verdict stays the first generated token, so scoring is unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from rlhf.config import JudgeConfig, LoraConfig, ModelConfig
from rlhf.judge.io import (
    MetricSink,
    drop_identical_pairs,
    fit_pairs,
    read_checkpoint_meta,
    write_json,
)
from rlhf.judge.prefix_forward import train_logits, train_logits_with_prefix
from rlhf.judge.rubric_judge import RubricJudge, judge_demos
from rlhf.model.load import load_causal_lm
from rlhf.model.shared import add_judge_adapter, load_judge_adapter, model_scope
from rlhf.report.io import atomic_save_dir

log = logging.getLogger(__name__)

META = "judge_meta.json"
IGNORE = -100


def top_layers(num_layers: int, last: int) -> Optional[List[int]]:
    """Indices of the last ``last`` decoder layers (None = all layers when last is 0 or covers them all)."""
    if last <= 0 or last >= num_layers:
        return None
    return list(range(num_layers - last, num_layers))


def target_regex(targets: Sequence[str], layers: Sequence[int]) -> str:
    """peft full-match regex for the target projections of the given decoder layers only.

    Matches "model.layers.28.self_attn.q_proj" (causal LM) and "layers.28.self_attn.q_proj" (bare backbone) alike.
    """
    return rf"(.*\.)?layers\.({'|'.join(str(i) for i in layers)})\.(.*\.)?({'|'.join(targets)})"


def peft_lora_config(lora: LoraConfig, task_type: Optional[str] = "CAUSAL_LM", layers: Optional[List[int]] = None):
    targets: Any = list(lora.target_modules) if layers is None else target_regex(lora.target_modules, layers)
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                          bias="none", task_type=task_type)


def attach_lora(model: torch.nn.Module, lora: LoraConfig, last_layers: int = 0,
                task_type: Optional[str] = "CAUSAL_LM") -> torch.nn.Module:
    """Freezes the base and wraps it with a fresh LoRA adapter (only the adapter trains)."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = top_layers(int(model.config.num_hidden_layers), last_layers)
    return get_peft_model(model, peft_lora_config(lora, task_type, layers))


def training_examples(judge: RubricJudge, row: Dict[str, Any],
                      use_rationale: bool) -> List[Tuple[List[int], List[int]]]:
    """[(context ids, target ids)] for one pair: two examples (both orders or chosen/rejected)."""
    pr = judge.prompter
    extra: List[int] = []
    if use_rationale and row.get("rationale"):
        extra = judge.tok("\nReason: " + str(row["rationale"]).strip(), add_special_tokens=False)["input_ids"]
        extra = extra[:judge.cfg.max_len // 4] + [judge.tok.eos_token_id]
    if pr.mode == "pairwise":
        prompt = pr.request(row)
        ab = pr.prefix_ids + pr.pair_suffix(prompt, row["chosen"], row["rejected"])
        ba = pr.prefix_ids + pr.pair_suffix(prompt, row["rejected"], row["chosen"])
        return [(ab, [pr.verdict_ids[0]] + extra), (ba, [pr.verdict_ids[1]] + extra)]
    good = pr.prefix_ids + pr.single_suffix(pr.request(row), row["chosen"])
    bad = pr.prefix_ids + pr.single_suffix(pr.request(row), row["rejected"])
    return [(good, [pr.verdict_ids[-1]] + extra), (bad, [pr.verdict_ids[0]] + extra)]


def pack_targets(examples: Sequence[Tuple[List[int], List[int]]]) -> Tuple[List[List[int]], torch.Tensor, int]:
    """Inputs (context + target[:-1]) and a (B, keep) label tensor aligned to the last ``keep`` positions."""
    keep = max(len(t) for _, t in examples)
    inputs, labels = [], torch.full((len(examples), keep), IGNORE, dtype=torch.long)
    for i, (ctx, tgt) in enumerate(examples):
        inputs.append(list(ctx) + list(tgt[:-1]))
        labels[i, keep - len(tgt):] = torch.tensor(tgt, dtype=torch.long)
    return inputs, labels, keep


def judge_step_loss(judge: RubricJudge, examples: Sequence[Tuple[List[int], List[int]]],
                    reuse_prefix: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Token cross-entropy over all target tokens, plus verdict-only diagnostics.

    reuse_prefix (default judge.reuse_prefix_cache): run the rubric + demonstrations prefix once per step and expand
    its keys/values over the batch instead of recomputing it for every example (same loss and gradients)."""
    inputs, labels, keep = pack_targets(examples)
    reuse = judge.cfg.reuse_prefix_cache if reuse_prefix is None else reuse_prefix
    prefix = judge.prompter.prefix_ids
    if reuse and prefix and all(list(x[:len(prefix)]) == list(prefix) and len(x) > len(prefix) for x in inputs):
        logits = train_logits_with_prefix(judge.model, prefix, [x[len(prefix):] for x in inputs], judge.pad_id,
                                          judge.device, keep).float()  # (B, keep, V)
    else:
        logits = train_logits(judge.model, inputs, judge.pad_id, judge.device, keep).float()  # (B, keep, V)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    first = torch.tensor([keep - len(t) for _, t in examples], device=logits.device)
    rows = torch.arange(len(examples), device=logits.device)
    vlog = logits[rows, first][:, judge.prompter.verdict_ids]  # verdict-position logits, verdict tokens only
    vtarget = torch.tensor([judge.prompter.verdict_ids.index(t[0]) for _, t in examples], device=logits.device)
    return {"loss": loss, "verdict_loss": F.cross_entropy(vlog.detach(), vtarget),
            "verdict_accuracy": (vlog.detach().argmax(-1) == vtarget).float().mean()}


def train_lora_judge(judge: RubricJudge, rows: Sequence[Dict[str, Any]], cfg: JudgeConfig, seed: int = 0,
                     log_fn: Optional[Callable[[Dict[str, float], int], None]] = None) -> List[Dict[str, float]]:
    """judge.train_steps AdamW steps over judge.batch_size pairs (2 examples each); only LoRA weights move."""
    rows, dropped = drop_identical_pairs(rows)
    use_rat = bool(cfg.use_rationales) and any(r.get("rationale") for r in rows)
    if cfg.use_rationales and not use_rat:
        log.warning("judge.use_rationales=true but the training data has no rationale column; verdict-only")
    sink = log_fn if log_fn is not None else MetricSink()
    with model_scope(judge.model, trainable=True):  # a judge on the actor's base trains its own adapter only
        history = _train_loop(judge, rows, cfg, seed, use_rat, dropped, sink)
    judge.invalidate_cache()
    return history


def _train_loop(judge: RubricJudge, rows: Sequence[Dict[str, Any]], cfg: JudgeConfig, seed: int, use_rat: bool,
                dropped: int, sink: Callable[[Dict[str, float], int], None]) -> List[Dict[str, float]]:
    judge.model.train()
    history = fit_pairs([p for p in judge.model.parameters() if p.requires_grad], rows, cfg, seed,
                        lambda batch: judge_step_loss(judge, [ex for r in batch
                                                              for ex in training_examples(judge, r, use_rat)]),
                        sink, dropped, desc="lora_judge")
    judge.model.eval()
    return history


def save_lora_judge(judge: RubricJudge, path: str | Path, model_cfg: Optional[ModelConfig] = None) -> Path:
    """Adapter (peft save_pretrained, safetensors) + judge_meta.json with the judge/model config, atomically."""

    def write(tmp: Path) -> None:
        judge.model.save_pretrained(str(tmp), safe_serialization=True)
        demos = [{k: d[k] for k in ("prompt", "chosen", "rejected", "_flip") if k in d} for d in judge.prompter.demos]
        write_json(tmp / META, {"kind": "lora_judge", "judge": asdict(judge.cfg),
                                "model": asdict(model_cfg) if model_cfg else None, "demos": demos})

    return atomic_save_dir(path, write)


def build_lora_judge(model_cfg: ModelConfig, cfg: JudgeConfig, device: torch.device | str = "cpu",
                     dtype: str = "float32", seed: int = 0, dataset_cfg: Any = None,
                     model: Optional[torch.nn.Module] = None, tokenizer: Any = None,
                     share_with: Optional[torch.nn.Module] = None) -> RubricJudge:
    """Base causal LM + fresh LoRA adapter (judge.lora), wrapped as a RubricJudge ready for train_lora_judge.

    ``share_with``: the actor's peft model; the judge becomes a second adapter on it instead of a copy of the base."""
    if share_with is not None:
        layers = top_layers(int(share_with.base_model.model.config.num_hidden_layers), cfg.lora_layers)
        view = add_judge_adapter(share_with, peft_lora_config(cfg.lora, "CAUSAL_LM", layers), seed)
        return RubricJudge(view, tokenizer, cfg, judge_demos(cfg, dataset_cfg), device)
    if model is None:
        model, tokenizer = load_causal_lm(model_cfg, dtype=dtype, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = attach_lora(model, cfg.lora, cfg.lora_layers)
    model.to(device)
    return RubricJudge(model, tokenizer, cfg, judge_demos(cfg, dataset_cfg), device)


def load_lora_judge(path: str | Path, model_cfg: Optional[ModelConfig] = None, device: torch.device | str = "cpu",
                    dtype: str = "float32", cfg: Optional[JudgeConfig] = None,
                    share_with: Optional[torch.nn.Module] = None, tokenizer: Any = None) -> RubricJudge:
    """Base model + saved adapter; the rubric/mode/demos recorded at training time unless ``cfg`` overrides them.

    ``share_with``: the actor's peft model; the saved adapter is loaded next to the actor's instead of on a copy."""
    path = Path(path)
    meta, model_cfg = read_checkpoint_meta(path, META, "lora_judge", model_cfg)
    saved = dict(meta["judge"])
    saved["lora"] = LoraConfig(**saved["lora"])
    jcfg = cfg if cfg is not None else JudgeConfig(**saved)
    if share_with is not None:
        model, tok = load_judge_adapter(share_with, path), tokenizer
    else:
        base, tok = load_causal_lm(model_cfg, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
        model.to(device)
    demos = meta.get("demos") if cfg is None else judge_demos(jcfg)
    return RubricJudge(model, tok, jcfg, demos or [], device)
