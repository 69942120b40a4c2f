"""The LoRA judge: the rubric judge with a rank-r LoRA adapter trained on preference pairs; the base stays frozen.

Training data per pair (pairwise mode): both presentation orders, each supervised with cross-entropy on the correct
verdict token ("A" when chosen is shown first, "B" otherwise); pointwise mode: chosen -> the top score token,
rejected -> the bottom one. A rubric with several criteria trains every criterion's prompt on the same targets (the
pair labels are overall preferences, not per-criterion labels: a simplification), each criterion with its own prefix
(KV-cached once per step). A row's ``rubric`` column replaces judge.rubric for that row. With judge.use_rationales
and a rationale column, the target continues after the verdict with "\\nReason: <rationale><eos>" — the verdict stays
the first generated token, so scoring is unchanged.
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
from rlhf.judge.prompts import JudgePrompter
from rlhf.judge.rubric_judge import RubricJudge, judge_demos
from rlhf.model.load import load_causal_lm
from rlhf.model.shared import add_judge_adapter, load_judge_adapter, model_scope
from rlhf.report.io import atomic_save_dir

log = logging.getLogger(__name__)

META = "judge_meta.json"
DEMO_KEYS = ("prompt", "chosen", "rejected", "_flip", "answer", "reference")
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


Example = Tuple[List[int], List[int]]  # (context ids, target ids)


def criterion_examples(judge: RubricJudge, row: Dict[str, Any],
                       use_rationale: bool) -> List[Tuple[JudgePrompter, List[Example]]]:
    """[(prompter, its two examples)] for one pair, one entry per criterion of the row's rubric (its ``rubric``
    column, else judge.rubric). Every criterion gets the same targets: the pair's label is an overall preference, not
    a per-criterion one, so a multi-criterion judge learns "chosen is better on every criterion" (a simplification)."""
    extra: List[int] = []
    if use_rationale and row.get("rationale"):
        extra = judge.tok("\nReason: " + str(row["rationale"]).strip(), add_special_tokens=False)["input_ids"]
        extra = extra[:judge.cfg.max_len // 4] + [judge.tok.eos_token_id]
    out = []
    for pr in judge.criterion_prompters(row.get("rubric")):
        if pr.mode == "pairwise":
            prompt = pr.request(row)
            ab = pr.prefix_ids + pr.pair_suffix(prompt, row["chosen"], row["rejected"])
            ba = pr.prefix_ids + pr.pair_suffix(prompt, row["rejected"], row["chosen"])
            out.append((pr, [(ab, [pr.verdict_ids[0]] + extra), (ba, [pr.verdict_ids[1]] + extra)]))
        else:
            good = pr.prefix_ids + pr.single_suffix(pr.request(row), row["chosen"])
            bad = pr.prefix_ids + pr.single_suffix(pr.request(row), row["rejected"])
            out.append((pr, [(good, [pr.verdict_ids[-1]] + extra), (bad, [pr.verdict_ids[0]] + extra)]))
    return out


def training_examples(judge: RubricJudge, row: Dict[str, Any], use_rationale: bool) -> List[Example]:
    """[(context ids, target ids)] for one pair: two examples (both orders or chosen/rejected) per criterion."""
    return [ex for _, exs in criterion_examples(judge, row, use_rationale) for ex in exs]


def batch_examples(judge: RubricJudge, rows: Sequence[Dict[str, Any]],
                   use_rationale: bool) -> Tuple[List[Example], List[JudgePrompter]]:
    """The examples of a batch of pairs and, for each, the prompter (criterion prefix, verdict tokens) it uses."""
    examples: List[Example] = []
    prompters: List[JudgePrompter] = []
    for row in rows:
        for pr, exs in criterion_examples(judge, row, use_rationale):
            examples += exs
            prompters += [pr] * len(exs)
    return examples, prompters


def pack_targets(examples: Sequence[Tuple[List[int], List[int]]]) -> Tuple[List[List[int]], torch.Tensor, int]:
    """Inputs (context + target[:-1]) and a (B, keep) label tensor aligned to the last ``keep`` positions."""
    keep = max(len(t) for _, t in examples)
    inputs, labels = [], torch.full((len(examples), keep), IGNORE, dtype=torch.long)
    for i, (ctx, tgt) in enumerate(examples):
        inputs.append(list(ctx) + list(tgt[:-1]))
        labels[i, keep - len(tgt):] = torch.tensor(tgt, dtype=torch.long)
    return inputs, labels, keep


def prefix_logits(judge: RubricJudge, inputs: Sequence[List[int]], prefix: Sequence[int], keep: int,
                  reuse: bool) -> torch.Tensor:
    """(B, keep, V) logits of inputs that share ``prefix``: the prefix run once and expanded (reuse), else in full."""
    if reuse and prefix and all(list(x[:len(prefix)]) == list(prefix) and len(x) > len(prefix) for x in inputs):
        return train_logits_with_prefix(judge.model, prefix, [x[len(prefix):] for x in inputs], judge.pad_id,
                                        judge.device, keep).float()
    return train_logits(judge.model, inputs, judge.pad_id, judge.device, keep).float()


def inverse_order(order: Sequence[int]) -> torch.Tensor:
    """inv with inv[order[k]] = k: rows stacked in ``order`` are put back in 0..n-1 order by indexing with inv."""
    inv = torch.empty(len(order), dtype=torch.long)
    inv[torch.tensor(list(order), dtype=torch.long)] = torch.arange(len(order))
    return inv


def verdict_diagnostics(vpos: torch.Tensor, targets: Sequence[int],
                        verdict_sets: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(verdict cross-entropy, verdict accuracy) from (B, V) logits at each example's verdict position, each example
    over its own verdict tokens (a per-row rubric may have another scale); detached."""
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for i, ids in enumerate(verdict_sets):
        groups.setdefault(tuple(ids), []).append(i)
    losses, hits = [], []
    for ids, rows in groups.items():
        vlog = vpos.detach()[rows][:, list(ids)]
        vtarget = torch.tensor([ids.index(targets[i]) for i in rows], device=vpos.device)
        losses.append(F.cross_entropy(vlog, vtarget) * (len(rows) / len(targets)))  # the group's share of the mean
        hits.append((vlog.argmax(-1) == vtarget).float())
    return (losses[0] if len(losses) == 1 else torch.stack(losses).sum()), torch.cat(hits).mean()


def judge_step_loss(judge: RubricJudge, examples: Sequence[Example], reuse_prefix: Optional[bool] = None,
                    prompters: Optional[Sequence[JudgePrompter]] = None) -> Dict[str, torch.Tensor]:
    """Token cross-entropy over all target tokens, plus verdict-only diagnostics.

    prompters: the prompter of each example (batch_examples; default judge.prompter for all). reuse_prefix (default
    judge.reuse_prefix_cache): run each criterion's rubric + demonstrations prefix once per step and expand its
    keys/values over that criterion's examples instead of recomputing it for every example (same loss and gradients)."""
    inputs, labels, keep = pack_targets(examples)
    reuse = judge.cfg.reuse_prefix_cache if reuse_prefix is None else reuse_prefix
    prompters = [judge.prompter] * len(examples) if prompters is None else list(prompters)
    groups: Dict[Tuple[Any, int], Tuple[JudgePrompter, List[int]]] = {}
    for i, pr in enumerate(prompters):
        groups.setdefault((pr.rubric, pr.criterion), (pr, []))[1].append(i)
    parts = [prefix_logits(judge, [inputs[i] for i in idx], pr.prefix_ids, keep, reuse) for pr, idx in groups.values()]
    if len(parts) == 1:
        logits = parts[0]  # (B, keep, V)
    else:
        order = [i for _, idx in groups.values() for i in idx]
        logits = torch.cat(parts)[inverse_order(order).to(parts[0].device)]
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)
    first = torch.tensor([keep - len(t) for _, t in examples], device=logits.device)
    rows = torch.arange(len(examples), device=logits.device)
    vloss, vacc = verdict_diagnostics(logits[rows, first], [t[0] for _, t in examples],
                                      [pr.verdict_ids for pr in prompters])
    return {"loss": loss, "verdict_loss": vloss, "verdict_accuracy": vacc}


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
                        lambda batch: judge_step_loss(judge, *batch_examples(judge, batch, use_rat)),
                        sink, dropped, desc="lora_judge")
    judge.model.eval()
    return history


def save_lora_judge(judge: RubricJudge, path: str | Path, model_cfg: Optional[ModelConfig] = None) -> Path:
    """Adapter (peft save_pretrained, safetensors) + judge_meta.json with the judge/model config, atomically."""

    def write(tmp: Path) -> None:
        judge.model.save_pretrained(str(tmp), safe_serialization=True)
        # everything a demonstration's turn reads, its reference too (judge.reference shows it after the request)
        demos = [{k: d[k] for k in DEMO_KEYS if k in d} for d in judge.prompter.demos]
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
