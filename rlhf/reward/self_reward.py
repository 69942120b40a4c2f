"""reward=self_reward (Self-Rewarding PPO, arXiv 2510.21090): reward = log pi_SFT(y|x) - log pi_base(y|x).

pi_SFT is the base after supervised fine-tuning on demonstrations (math: the reference worked solutions; chat: the
reference replies of the train split), pi_base the base itself; the reward is the sequence sum of the per-token
log-ratio over the reply (``reward.length_normalize``: divided by the reply's token count), then
``reward.scale * signal + reward.shift``. Only demonstrations are needed: no preference pairs, no judge.

Where the pieces live:
- a LoRA SFT adapter and a LoRA actor share one base: the SFT adapter is a second adapter ("sft") on the actor's
  peft model, pi_base is that model with every adapter disabled (which is also the actor's reference);
- otherwise one separate copy of the base holds the SFT adapter (pi_base = adapters off), or, for full SFT, a
  fine-tuned copy next to a frozen base copy.
``reward.checkpoint`` loads a trained SFT model (`python -m rlhf.sft` writes one: a LoRA adapter dir or a full model
dir, safetensors only); null runs the SFT step first and saves it to ``<run_dir>/sft``.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from rlhf.config import Config, DatasetConfig, SFTConfig
from rlhf.dataset.chat import render_prompt
from rlhf.judge.lora_judge import peft_lora_config
from rlhf.model.load import DTYPES, load_causal_lm
from rlhf.model.sft import pack, response_logprobs, sequence_logprobs, train_sft
from rlhf.model.shared import (
    ACTOR_ADAPTER,
    AdapterView,
    adapter_parameters,
    copy_adapter_weights,
    keep_requires_grad,
    model_scope,
)
from rlhf.report.io import atomic_save_dir
from rlhf.rollout.hf_engine import HFEngine
from rlhf.reward.base import RewardOutput
from rlhf.rollout.base import Rollout
from rlhf.task import PromptTask, TaskItem, build_task
from rlhf.task.math_grading import is_correct, reference_solution

log = logging.getLogger(__name__)

SFT_ADAPTER = "sft"
ADAPTER_CONFIG = "adapter_config.json"


def self_reward(logp_sft: torch.Tensor, logp_base: torch.Tensor, lengths: torch.Tensor,
                normalize: bool) -> torch.Tensor:
    """Per sequence: sum of log pi_SFT - log pi_base over the reply (or its mean per token when ``normalize``; an
    empty reply scores 0)."""
    diff = logp_sft.float() - logp_base.float()
    return diff / lengths.float().clamp_min(1.0) if normalize else diff


def demonstration_of(item: TaskItem) -> Optional[str]:
    """The demonstration reply of a task item: a math item's reference solution, a chat item's reference reply."""
    if item.answer:
        return reference_solution(item.answer)
    return item.reference or None


def demonstrations(task: PromptTask, tokenizer: Any, split: str, n: int,
                   max_len: int) -> List[Tuple[List[int], List[int]]]:
    """(prompt ids, reply ids ending with EOS) for the first n items of a split (0: all), the prompt exactly as the
    actor sees it; the reply is cut to fit max_len, and an item whose prompt alone fills it is skipped."""
    items = task.items(split)
    out = []
    for item in items[:n] if n else items:
        reply = demonstration_of(item)
        if reply is None:
            continue
        p = tokenizer(task.prompt_text(tokenizer, item), add_special_tokens=False)["input_ids"]
        r = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        room = max_len - len(p)
        if room > 1:
            out.append((p, r[:room]))
    if not out:
        raise ValueError(f"dataset.name: {task.name} {split} split has no demonstrations (reference solutions or "
                         f"replies) that fit sft.max_len={max_len}")
    return out


def _module(model: Any) -> nn.Module:
    return model.peft if isinstance(model, AdapterView) else model


def sft_models(base: nn.Module, sft_cfg: SFTConfig, model_cfg: Any, seed: int,
               checkpoint: Optional[str] = None) -> Tuple[Any, Any]:
    """(pi_SFT, pi_base) as callables over ``base`` (a plain causal LM or the actor's peft model): a LoRA adapter
    named "sft" (fresh, or loaded from ``checkpoint``) with pi_base = adapters off, or for full SFT a copy."""
    is_peft = hasattr(base, "peft_config")
    lora = sft_cfg.lora if checkpoint is None else (Path(checkpoint) / ADAPTER_CONFIG).is_file()
    if not lora:
        if is_peft:
            raise ValueError("sft.lora=false: full SFT needs its own copy of the base, not the actor's peft model")
        if checkpoint is not None:
            sft = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=next(base.parameters()).dtype,
                                                       use_safetensors=True)
        else:
            sft = copy.deepcopy(base)
        for p in base.parameters():
            p.requires_grad_(False)
        for p in sft.parameters():
            p.requires_grad_(checkpoint is None)
        return sft, base
    with keep_requires_grad(base) if is_peft else torch.random.fork_rng():
        torch.manual_seed(seed)
        if is_peft:
            if SFT_ADAPTER in base.peft_config:
                raise ValueError(f"the actor model already has an {SFT_ADAPTER!r} adapter")
            if checkpoint is not None:
                base.load_adapter(checkpoint, adapter_name=SFT_ADAPTER, is_trainable=False)
            else:
                base.add_adapter(SFT_ADAPTER, peft_lora_config(model_cfg.lora))
            peft = base
        else:
            for p in base.parameters():
                p.requires_grad_(False)
            if checkpoint is not None:
                peft = PeftModel.from_pretrained(base, checkpoint, adapter_name=SFT_ADAPTER, is_trainable=False)
            else:
                peft = get_peft_model(base, peft_lora_config(model_cfg.lora), adapter_name=SFT_ADAPTER)
    return AdapterView(peft, SFT_ADAPTER), AdapterView(peft, None)


def trainable_parameters(sft: Any) -> List[nn.Parameter]:
    if isinstance(sft, AdapterView):
        return list(adapter_parameters(sft.peft, SFT_ADAPTER))
    return [p for p in sft.parameters() if p.requires_grad]


def run_sft(sft: Any, tokenizer: Any, dataset_cfg: DatasetConfig, sft_cfg: SFTConfig, seed: int = 0,
            log_fn: Any = None) -> Dict[str, Any]:
    """Train pi_SFT on the train split's demonstrations; returns the held-out response NLL before and after."""
    task = build_task(dataset_cfg)
    train = demonstrations(task, tokenizer, "train", sft_cfg.num_train, sft_cfg.max_len)
    held = demonstrations(task, tokenizer, "test", sft_cfg.num_eval, sft_cfg.max_len) if sft_cfg.num_eval else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    before = heldout_nll(sft, held, pad)
    em_before = heldout_em(sft, tokenizer, task, sft_cfg, dataset_cfg.max_prompt_tokens)
    t0 = time.perf_counter()
    with model_scope(sft, trainable=True):
        params = trainable_parameters(sft)
        history = train_sft(sft, params, train, sft_cfg.steps, sft_cfg.batch_size, sft_cfg.lr, pad, seed, log_fn)
    for p in params:  # pi_SFT is frozen from here on
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    after = heldout_nll(sft, held, pad)
    em_after = heldout_em(sft, tokenizer, task, sft_cfg, dataset_cfg.max_prompt_tokens)
    log.info("sft: %d steps on %d demonstrations in %.0f s; held-out NLL per token %.3f -> %.3f (%d test items)",
             sft_cfg.steps, len(train), seconds, before, after, len(held))
    em = {}
    if em_before is not None and em_after is not None:
        em = {"em_before": em_before, "em_after": em_after, **{k: v for k, v in em_after.items()}}
        log.info("sft: held-out greedy EM strict %.3f -> %.3f, flexible %.3f -> %.3f (%d problems)",
                 em_before["em_strict"], em_after["em_strict"], em_before["em_flexible"], em_after["em_flexible"],
                 int(em_after["n"]))
    return {**em, "steps": sft_cfg.steps, "train_demonstrations": len(train), "heldout_items": len(held),
            "heldout_nll_before": before, "heldout_nll_after": after,
            "train_loss_first": history[0]["loss"], "train_loss_last": history[-1]["loss"],
            "seconds": seconds}


def heldout_em(model: Any, tokenizer: Any, task: PromptTask, sft_cfg: SFTConfig,
               max_prompt_tokens: int) -> Optional[Dict[str, float]]:
    """Greedy exact match of ``model`` on the first sft.eval_em test problems of a math task (None: skipped)."""
    if not sft_cfg.eval_em or task.kind != "math":
        return None
    items = task.items("test")[:sft_cfg.eval_em]
    module = _module(model)
    device = next(module.parameters()).device
    engine = HFEngine(module, tokenizer, device, max_prompt_tokens)
    with torch.no_grad(), model_scope(model):  # an adapter view generates with its adapter active
        out = task.evaluate(engine, tokenizer, items, min(32, len(items)), sft_cfg.eval_max_new_tokens,
                            progress=True, desc="sft held-out EM")
    return {k: float(out.summary[k]) for k in ("em_strict", "em_flexible", "n")}


def heldout_nll(model: Any, held: Sequence[Tuple[List[int], List[int]]], pad_id: int) -> float:
    """Token-level mean NLL of the held-out demonstrations' replies (nan when there are none)."""
    if not held:
        return float("nan")
    module = _module(model)
    was = module.training
    module.eval()
    with model_scope(model):
        sums, counts = sequence_logprobs(model, [h[0] for h in held], [h[1] for h in held], pad_id)
    module.train(was)
    return float(-sums.sum() / counts.sum().clamp_min(1.0))


def save_sft(sft: Any, path: Path) -> Path:
    """A LoRA SFT adapter (single-adapter peft layout) or a full model, safetensors, written atomically."""

    def write(tmp: Path) -> None:
        if isinstance(sft, AdapterView):
            sft.save_pretrained(tmp)
        else:
            sft.save_pretrained(str(tmp), safe_serialization=True)

    return atomic_save_dir(path, write)


class SelfReward:
    """Scores rollouts with log pi_SFT - log pi_base on the rollout's own token ids."""

    def __init__(self, cfg: Config, sft: Any, base: Any, tokenizer: Any, device: torch.device,
                 batch_size: int = 8):
        self.cfg, self.sft, self.base, self.tok = cfg, sft, base, tokenizer
        self.device = device
        self.batch_size = batch_size
        self.summary: Dict[str, str] = {}

    def _sums(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, rmask: torch.Tensor, p: int) -> torch.Tensor:
        module = _module(model)
        was = module.training
        module.eval()
        out = []
        with torch.no_grad(), model_scope(model):
            for s in range(0, ids.shape[0], self.batch_size):
                lp = response_logprobs(model, ids[s:s + self.batch_size].to(self.device),
                                       mask[s:s + self.batch_size].to(self.device), p).float().cpu()
                out.append((lp * rmask[s:s + self.batch_size]).sum(-1))
        module.train(was)
        return torch.cat(out)

    def signal(self, ids: torch.Tensor, mask: torch.Tensor, rmask: torch.Tensor,
               p: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rmask = rmask.float().cpu()
        lp_sft, lp_base = self._sums(self.sft, ids, mask, rmask, p), self._sums(self.base, ids, mask, rmask, p)
        return self_reward(lp_sft, lp_base, rmask.sum(-1), self.cfg.reward.length_normalize), lp_sft, lp_base

    def _affine(self, signal: torch.Tensor) -> torch.Tensor:
        return (signal * self.cfg.reward.scale + self.cfg.reward.shift).to(torch.float32)

    def score(self, rollout: Rollout) -> RewardOutput:
        signal, lp_sft, lp_base = self.signal(rollout.input_ids, rollout.attention_mask, rollout.response_mask,
                                              rollout.prompt_len)
        rewards = self._affine(signal)
        metas = rollout.meta_per_sample()
        correct = None
        if metas and all(m.get("answer") for m in metas):  # math: EM beside the reward, so hacking shows
            correct = torch.tensor([is_correct(r, str(m["answer"]), "flexible")
                                    for r, m in zip(rollout.responses, metas)], dtype=torch.bool)
        return RewardOutput(rewards=rewards, correct=correct, metrics={
            "self_reward_mean": float(signal.mean()), "logp_sft_mean": float(lp_sft.mean()),
            "logp_base_mean": float(lp_base.mean())})

    def score_replies(self, metas: List[Dict[str, Any]], replies: List[str]) -> torch.Tensor:
        """Held-out replies: the prompt is the item's judge prompt as one user turn (no rollout ids to reuse)."""
        prompts = [self.tok(render_prompt(self.tok, [{"role": "user", "content": str(m.get("judge_prompt", ""))}],
                                          None), add_special_tokens=False)["input_ids"] for m in metas]
        responses = [self.tok(r, add_special_tokens=False)["input_ids"] for r in replies]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        ids, mask, rmask, p = pack(prompts, responses, pad)
        return self._affine(self.signal(ids, mask, rmask, p)[0])


def build_self_reward(cfg: Config, context: Any) -> SelfReward:
    """pi_SFT and pi_base on the actor's base when both are LoRA (no DeepSpeed), else on one separate copy."""
    actor = getattr(context, "actor_model", None)
    device = getattr(context, "device", None) or torch.device("cpu")
    run_dir = Path(context.run_dir) if getattr(context, "run_dir", None) is not None else None
    checkpoint = cfg.reward.checkpoint
    in_run = run_dir / "sft" if run_dir is not None else None
    if not checkpoint and in_run is not None and any((in_run / f).is_file() for f in (ADAPTER_CONFIG, "config.json")):
        log.info("self_reward: reusing the SFT model trained earlier in this run (%s)", in_run)
        checkpoint = str(in_run)
    lora = (Path(checkpoint) / ADAPTER_CONFIG).is_file() if checkpoint else cfg.sft.lora
    share = (lora and actor is not None and hasattr(actor, "peft_config") and not cfg.hardware.deepspeed_stage)
    tokenizer = getattr(context, "tokenizer", None)
    if share:
        base = actor
        log.info("self_reward: pi_SFT is a second adapter on the actor's base; pi_base = adapters off")
    else:
        base, tokenizer = load_causal_lm(cfg.model, dtype=cfg.hardware.dtype if cfg.hardware.dtype in DTYPES
                                         else "float32", seed=cfg.seed)
        base.to(device)
        log.info("self_reward: pi_SFT and pi_base on a separate copy of the base (%s)",
                 "full SFT" if not lora else "the actor is not a LoRA model on this backend")
    sft, ref = sft_models(base, cfg.sft, cfg.model, cfg.seed, checkpoint)
    if not share and not isinstance(sft, AdapterView):
        sft.to(device)
    reward = SelfReward(cfg, sft, ref, tokenizer, device, cfg.judge.eval_batch_size)
    if cfg.reward.init_actor_from_sft and not share:
        raise ValueError("reward.init_actor_from_sft: needs a LoRA actor with a LoRA SFT adapter on its base (no "
                         "DeepSpeed); here pi_SFT is on a separate copy")
    if checkpoint is None:
        info = run_sft(sft, tokenizer, cfg.dataset, cfg.sft, cfg.seed,
                       log_fn=(lambda m, s: context.log(m, s, prefix="sft")) if getattr(context, "log", None)
                       else None)
        if in_run is not None:
            save_sft(sft, in_run)
        reward.summary["SFT held-out NLL per token"] = (f"{info['heldout_nll_before']:.3f} -> "
                                                        f"{info['heldout_nll_after']:.3f} on {info['heldout_items']} "
                                                        f"test demonstrations")
    if cfg.reward.init_actor_from_sft:
        try:
            n = copy_adapter_weights(actor, SFT_ADAPTER, ACTOR_ADAPTER)
        except ValueError as e:
            raise ValueError(f"reward.init_actor_from_sft: SFT {e} (model.lora must match the SFT adapter)") from None
        log.info("self_reward: the actor starts from pi_SFT (%d adapter tensors copied)", n)
        reward.summary["actor initialisation"] = "pi_SFT (reward.init_actor_from_sft)"
    return reward

