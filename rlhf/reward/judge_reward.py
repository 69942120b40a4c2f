"""Judge / RM as the PPO reward: ``build_judge_reward(cfg, context).score(rollout) -> RewardOutput``.

Signals (reward.judge_signal) for rubric_judge / lora_judge:
  pointwise  expected rubric score of each response;
  pairwise   P(response better than the dataset's reference solution), both A/B orders averaged.
bt_rm: the RM's scalar score. Every signal then goes through reward = reward.scale * signal + reward.shift.
A judge scores a prompt whose metadata carries a ``rubric`` (the dataset's per-row rubric column) with that rubric
instead of judge.rubric; with several criteria, the per-criterion means are logged as judge_criterion/<name>_mean.
Without reward.checkpoint, a lora_judge / bt_rm is trained first (synthetic_prefs train split) in the same run,
saved to <run_dir>/judge, its metrics sent to context.log(..., prefix="judge") or <run_dir>/judge_metrics.jsonl.
A rubric_judge / lora_judge runs on the actor's own base model when judge.share_base allows it (rubric: adapters off,
or the full-FT reference copy; lora: a second adapter next to the actor's), else on a separate frozen copy.
A run resumed with an in-run trained judge loads <run_dir>/judge instead of training it again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from rlhf.config import Config, HardwareConfig, share_base_obstacle
from rlhf.dataset.math_data import judge_prompt
from rlhf.judge.factory import (
    build_pair_scorer,
    heldout_pairs,
    judge_cfg_for_signal,
    pair_accuracy,
    pair_source,
    saved_scorer_in,
)
from rlhf.judge.io import MetricSink
from rlhf.judge.policy_pairs import SUBSET_VS_POLICY, policy_pairs, ranking
from rlhf.judge.prompts import guided_request, reference_of
from rlhf.report.io import atomic_write_text
from rlhf.reward.base import RewardOutput
from rlhf.rollout.base import Rollout
from rlhf.task.math_grading import answer_formatted, is_correct

log = logging.getLogger(__name__)


def reference_text(meta: Dict[str, Any]) -> str:
    """What a pairwise judge compares a reply with: the task's reference reply, else the math reference solution (the
    same text a judge.reference=solution judge is shown)."""
    ref = reference_of(meta, "solution")
    if ref is None:
        raise ValueError("a pairwise judge needs a reference reply or answer for every prompt")
    return ref


def item_rubrics(metas: List[Dict[str, Any]]) -> Optional[List[Optional[str]]]:
    """Each prompt's own judge rubric (TaskItem.meta["rubric"], from the dataset's rubric column; None: judge.rubric),
    or None when no prompt has one."""
    rubrics = [m.get("rubric") or None for m in metas]
    return rubrics if any(rubrics) else None


def affine(signal: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    return (signal.float() * scale + shift).to(torch.float32)


def mean_where(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else float("nan")


def group_ranking_accuracy(scores: torch.Tensor, correct: torch.Tensor, group_size: int) -> float:
    """policy_pairs.ranking's group_accuracy for a rollout: its groups are consecutive runs of group_size replies."""
    groups = [i // group_size for i in range(scores.numel())]
    return ranking(scores.float(), correct.bool(), groups)["group_accuracy"]


class JudgeReward:
    """Wraps a RubricJudge or RewardModel; scores each sequence of a Rollout."""

    def __init__(self, cfg: Config, scorer: Any, run_dir: Optional[Path] = None):
        self.cfg = cfg
        self.kind = cfg.reward.name
        self.signal = "rm" if self.kind == "bt_rm" else cfg.reward.judge_signal
        self.scorer = scorer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.calls = 0
        self.summary: Dict[str, str] = {}  # lines for the run's closing summary (e.g. the held-out pair accuracy)
        self.heldout_accuracy: Optional[float] = None  # the judge/RM's held-out pair accuracy (summary.json)

    def judge_prompt_of(self, meta: Dict[str, Any]) -> Optional[str]:
        """The prompt as the judge reads it: the task's judge_prompt, or a math question plus the format instruction;
        a reference-guided judge (judge.reference) also sees the item's reference (a BT RM never does)."""
        if meta.get("judge_prompt"):
            prompt = str(meta["judge_prompt"])
        elif meta.get("question"):
            prompt = judge_prompt(str(meta["question"]), self.cfg.dataset.system_prompt)
        else:
            return None
        prompter = getattr(self.scorer, "prompter", None)  # a loaded judge keeps the reference mode it was trained in
        return prompt if prompter is None else guided_request(prompt, meta, prompter.reference)

    def judge_prompts(self, rollout: Rollout) -> List[str]:
        return [self.judge_prompt_of(m) or rollout.prompts[rollout.prompt_index(i)]
                for i, m in enumerate(rollout.meta_per_sample())]

    def raw_signal(self, prompts: List[str], responses: List[str], metas: List[Dict[str, Any]]) -> torch.Tensor:
        if self.signal == "rm":
            return self.scorer.score(prompts, responses, batch_size=self.cfg.judge.eval_batch_size)
        rubrics = item_rubrics(metas)
        if self.signal == "pointwise":
            return self.scorer.pointwise_scores(prompts, responses, rubrics=rubrics)
        missing = [i for i, m in enumerate(metas) if not (m.get("reference") or m.get("answer"))]
        if missing:
            raise ValueError(f"reward.judge_signal=pairwise needs a reference reply or answer for every prompt; "
                             f"missing for sample {missing[0]}")
        return self.scorer.prob_first_better(prompts, responses, [reference_text(m) for m in metas], rubrics=rubrics)

    def format_bonus(self, metas: List[Dict[str, Any]], replies: List[str]) -> Optional[torch.Tensor]:
        """reward.format_bonus for each reply to a math prompt (one with a reference answer) whose `#### N` answer is
        well formed (reward.format_at_end as for exact_match), 0 for the others; None when the bonus is off. The
        judge/RM's score stays the accuracy signal; this is the rule-based format term beside it (as in R1's
        accuracy + format rewards)."""
        bonus = self.cfg.reward.format_bonus
        if not bonus:
            return None
        return torch.tensor([bonus if m.get("answer") and answer_formatted(r, self.cfg.reward.format_at_end) else 0.0
                             for r, m in zip(replies, metas)], dtype=torch.float32)

    def score_replies(self, metas: List[Dict[str, Any]], replies: List[str]) -> torch.Tensor:
        prompts = [self.judge_prompt_of(m) or "" for m in metas]
        rewards = affine(self.raw_signal(prompts, list(replies), metas).float().cpu(), self.cfg.reward.scale,
                         self.cfg.reward.shift)
        bonus = self.format_bonus(metas, list(replies))
        return rewards if bonus is None else rewards + bonus

    def score(self, rollout: Rollout) -> RewardOutput:
        metas = rollout.meta_per_sample()
        prompts = self.judge_prompts(rollout)
        responses = list(rollout.responses)
        signal = self.raw_signal(prompts, responses, metas).float().cpu()
        rewards = affine(signal, self.cfg.reward.scale, self.cfg.reward.shift)
        metrics: Dict[str, float] = {
            "judge_score_mean": float(signal.mean()) if signal.numel() else float("nan"),
            "judge_score_std": float(signal.std()) if signal.numel() > 1 else 0.0,
            "judge_reward_mean": float(rewards.mean()) if rewards.numel() else float("nan"),
        }
        bonus = self.format_bonus(metas, responses)
        if bonus is not None:
            rewards = rewards + bonus
            metrics["format_rate"] = float((bonus > 0).float().mean()) if bonus.numel() else float("nan")
        for k, v in getattr(self.scorer, "last_metrics", {}).items():
            metrics[f"judge_{k}"] = v
        correct = None
        if metas and all(m.get("answer") for m in metas):
            correct = torch.tensor([is_correct(r, str(m["answer"]), "flexible") for r, m in zip(responses, metas)],
                                   dtype=torch.bool)
            metrics["em_flexible"] = float(correct.float().mean())
            metrics["judge_score_correct"] = mean_where(signal, correct)
            metrics["judge_score_wrong"] = mean_where(signal, ~correct)
            metrics["judge_group_accuracy"] = group_ranking_accuracy(signal, correct, rollout.group_size)
        if self.cfg.judge.generate_rationale and self.signal != "rm" and responses:
            self._log_rationale(prompts[0], responses[0], metas[0])
        self.calls += 1
        return RewardOutput(rewards=rewards, metrics=metrics, correct=correct)

    def _log_rationale(self, prompt: str, response: str, meta: Dict[str, Any]) -> None:
        """One generated rationale per call, for inspection only (written to <run_dir>/judge_rationales.jsonl)."""
        other = reference_text(meta) if self.signal == "pairwise" and (meta.get("reference") or meta.get("answer")) \
            else None
        try:
            text = self.scorer.rationale(prompt, response, other)
        except Exception as e:  # inspection must never break training
            log.warning("judge rationale generation failed: %s", e)
            return
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "judge_rationales.jsonl", "a") as f:
                f.write(json.dumps({"call": self.calls, "prompt": prompt, "response": response,
                                    "rationale": text}) + "\n")


def build_judge_reward(cfg: Config, context: Any, name: str = "judge") -> JudgeReward:
    """reward=bt_rm | rubric_judge | lora_judge -> JudgeReward on context.device (trains first if no checkpoint).
    ``name``: the run-dir folder it is saved to and the metrics prefix of its training (reward=routed builds an RM
    under "rm" and a judge under "judge")."""
    kind = cfg.reward.name
    judge_cfg = cfg.judge if kind == "bt_rm" else judge_cfg_for_signal(cfg.judge, cfg.reward.judge_signal)
    run_dir = Path(context.run_dir) if getattr(context, "run_dir", None) is not None else None
    device = getattr(context, "device", None)
    hw = HardwareConfig(**{**cfg.hardware.__dict__, "device": str(device.type if isinstance(device, torch.device)
                                                                   else device or cfg.hardware.device)})
    log_fn = getattr(context, "log", None)
    sink = MetricSink(log_fn, (run_dir / f"{name}_metrics.jsonl") if run_dir is not None else None, prefix=name)
    checkpoint = cfg.reward.checkpoint
    in_run = run_dir / name if run_dir is not None else None
    if not checkpoint and saved_scorer_in(kind, in_run):
        log.info("judge: reusing the %s trained earlier in this run (%s)", kind, in_run)
        checkpoint = str(in_run)
    needs_training = kind in ("lora_judge", "bt_rm") and not checkpoint
    extra = on_policy_pairs(cfg, context, run_dir / f"{name}_policy_pairs.jsonl" if run_dir is not None else None) \
        if needs_training and cfg.judge.policy_pairs > 0 else []
    share_with = shared_judge_base(cfg, context)
    scorer = build_pair_scorer(cfg.reward, judge_cfg, cfg.model, hw, checkpoint=checkpoint, seed=cfg.seed,
                               train_dir=in_run if needs_training else None, dataset_cfg=cfg.dataset, log_fn=sink,
                               share_with=share_with, tokenizer=getattr(context, "tokenizer", None),
                               extra_pairs=extra)
    if isinstance(device, torch.device) and device.type != "cpu":  # (a judge on a shared model is there already)
        if hasattr(scorer, "model"):
            scorer.model.to(device)
            scorer.device = device
        else:
            scorer.to(device)
    engine = getattr(context, "rollout_engine", None)
    if cfg.judge.vllm and kind in ("rubric_judge", "lora_judge"):  # the engine holds the base; the actor is a LoRA
        serve_judge_with_vllm(scorer, engine, kind, checkpoint or (str(in_run) if in_run is not None else None),
                              cfg.dataset)
    reward = JudgeReward(cfg, scorer, run_dir)
    if cfg.judge.heldout_pairs > 0:
        rows = heldout_pairs(cfg.dataset, cfg.judge.heldout_pairs)
        source = pair_source(cfg.dataset).name
        t0 = time.perf_counter()
        acc = pair_accuracy(scorer, rows, cfg.judge.eval_batch_size)
        log.info("judge: %s held-out pair accuracy %.3f on %d %s test pairs (%.1f s)", kind, acc, len(rows), source,
                 time.perf_counter() - t0)
        if needs_training:  # logged once, next to the training curve (a resumed run reuses the judge)
            sink({"heldout_accuracy": acc, "heldout_pairs": float(len(rows))}, cfg.judge.train_steps)
        reward.summary[f"{kind} held-out pair accuracy"] = f"{100 * acc:.1f} % on {len(rows)} {source} test pairs"
        reward.heldout_accuracy = acc
    return reward


def on_policy_pairs(cfg: Config, context: Any, path: Optional[Path]) -> List[Dict[str, Any]]:
    """judge.policy_pairs: the actor's samples on train-split prompts (context.sample_policy) as preference pairs
    (rlhf/judge/policy_pairs.py), also written to ``path`` (JSONL) for inspection."""
    sample = getattr(context, "sample_policy", None)
    if sample is None:
        raise ValueError("judge.policy_pairs: needs the actor of a training run to sample from (rlhf.train)")
    t0 = time.perf_counter()
    groups = sample(cfg.judge.policy_pairs, cfg.judge.policy_samples)
    rows = policy_pairs(groups, cfg.seed)
    replies = sum(len(r) for _, r in groups)
    vs_policy = sum(r["subset"] == SUBSET_VS_POLICY for r in rows)
    log.info("judge: %d on-policy pairs from %d replies to %d train prompts (%d wrong vs right replies of the same "
             "prompt, %d replies with their final answer set right vs wrong; %.0f s)", len(rows), replies,
             len(groups), vs_policy, len(rows) - vs_policy, time.perf_counter() - t0)
    if not rows:
        log.warning("judge.policy_pairs: the actor's replies gave no pair (no reply states a number); the judge "
                    "trains on its preference dataset only")
    if path is not None:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


VLLM_JUDGE_TOL = 1e-2  # max |score| gap between the vLLM and transformers verdicts at start-up (float32: ~1e-3)


def serve_judge_with_vllm(scorer: Any, engine: Any, kind: str, adapter_dir: Optional[str], dataset_cfg: Any,
                          check_items: int = 4) -> float:
    """judge.vllm: the judge's verdict log-probs come from the rollout engine from now on (rubric_judge: its base
    weights; lora_judge: the saved adapter in ``adapter_dir`` as a pinned LoRA request). Before switching, a few
    held-out pairs are scored both ways; a gap above VLLM_JUDGE_TOL fails the run (wrong base, adapter not applied).
    Returns the gap."""
    if not hasattr(engine, "verdict_logprobs"):
        raise ValueError("judge.vllm: the run has no vLLM engine to score the judge with")
    request = None
    if kind == "lora_judge":
        if adapter_dir is None or not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise ValueError(f"judge.vllm: no saved lora_judge adapter to serve ({adapter_dir})")
        request = engine.add_static_lora("judge", adapter_dir)
    rows = heldout_pairs(dataset_cfg, check_items)
    args = ([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])

    def scores(lora: Any) -> torch.Tensor:  # lora: a LoRA request for the engine; False: transformers
        scorer.verdict_backend = None if lora is False else (
            lambda prompts, allowed: engine.verdict_logprobs(prompts, allowed, lora_request=lora))
        return torch.tensor(scorer.score_pairs(*args), dtype=torch.float32)

    reference = scores(False)
    moved = float((scores(None) - reference).abs().max()) if request is not None else None  # adapter off
    gap = float((scores(request) - reference).abs().max())  # leaves the engine as the judge's backend
    if not gap <= VLLM_JUDGE_TOL:
        raise RuntimeError(f"judge.vllm: the vLLM engine's verdict scores differ from the transformers judge's by "
                           f"{gap:.3g} (> {VLLM_JUDGE_TOL}) on {len(rows)} held-out pairs; the engine does not hold "
                           f"the judge's weights")
    log.info("judge.vllm: %s verdicts scored by the vLLM engine (%s, prefix cache); vLLM and transformers agree "
             "within %.2e on %d held-out pairs", kind, "base weights" if request is None else "adapter as a LoRA "
             "request", gap, len(rows))
    if moved is not None:  # what the check is worth: how far the adapter moves these scores from the base's
        log.info("judge.vllm: without the adapter the same scores move by up to %.2e", moved)
    return gap


def shared_judge_base(cfg: Config, context: Any) -> Optional[torch.nn.Module]:
    """The model a rubric_judge / lora_judge runs on instead of a copy (judge.share_base), or None for a copy."""
    want = cfg.judge.share_base
    if want is False or cfg.reward.name == "bt_rm":
        return None
    why = share_base_obstacle(cfg)
    model = None
    if why is None:
        actor = getattr(context, "actor_model", None)
        if actor is not None and hasattr(actor, "peft_config"):
            model = actor  # LoRA actor: rubric = adapters off, lora_judge = a second adapter
        elif cfg.reward.name == "rubric_judge":
            model = getattr(context, "reference_model", None)  # full fine-tuning: the frozen reference copy
        if model is None:
            why = ("no LoRA actor or frozen reference model was handed to the reward (e.g. a judge built outside a "
                   "training run)")
    if why is not None:
        if want:
            raise ValueError(f"judge.share_base: true is not possible here: {why}")
        log.info("judge: a separate copy of the base model (%s)", why)
        return None
    log.info("judge: %s on the actor's base model (no second copy)", cfg.reward.name)
    return model
