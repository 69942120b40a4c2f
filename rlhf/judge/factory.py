"""Build a judge/RM from config: rubric_judge (training-free), lora_judge, bt_rm — loaded or trained on the spot.

Every object returned has ``score_pairs(prompts, chosen, rejected) -> (scores_chosen, scores_rejected)`` (used by
RewardBench scoring) and is placed on the requested device.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from rlhf.config import (
    DatasetConfig,
    HardwareConfig,
    JudgeConfig,
    ModelConfig,
    RewardConfig,
)
from rlhf.dataset.prefs import PREF_DATASETS, pref_rows
from rlhf.judge.bt_rm import META as RM_META
from rlhf.judge.bt_rm import build_reward_model, load_reward_model, train_bt_rm
from rlhf.judge.lora_judge import META as JUDGE_META
from rlhf.judge.lora_judge import (
    build_lora_judge,
    load_lora_judge,
    save_lora_judge,
    train_lora_judge,
)
from rlhf.judge.master_keys import with_master_key_negatives
from rlhf.judge.pair_losses import pair_loss_fn
from rlhf.judge.policy_pairs import mix_in
from rlhf.judge.rm_ensemble import RMEnsemble, build_rm_ensemble, load_rm_ensemble
from rlhf.judge.rubric_judge import build_rubric_judge
from rlhf.model.device import resolve_device
from rlhf.model.shared import AdapterView

log = logging.getLogger(__name__)

JUDGE_KINDS = ("rubric_judge", "lora_judge", "bt_rm")


def pair_source(dataset_cfg: Optional[DatasetConfig]) -> DatasetConfig:
    """Where a lora_judge / bt_rm without a checkpoint learns from: the run's preference dataset, else synthetic_prefs
    (dataset seed 0, so its test split stays held out)."""
    if dataset_cfg is not None and dataset_cfg.name in PREF_DATASETS and dataset_cfg.name != "rewardbench":
        return dataset_cfg
    return DatasetConfig(name="synthetic_prefs", num_train=2000, num_test=300,
                         system_prompt=dataset_cfg.system_prompt if dataset_cfg is not None else
                         DatasetConfig().system_prompt,
                         label_noise=dataset_cfg.label_noise if dataset_cfg is not None else 0.0)


def flip_labels(rows: Sequence[Dict[str, Any]], fraction: float, seed: int) -> List[Dict[str, Any]]:
    """A copy of rows with chosen and rejected swapped on round(fraction * len(rows)) of them, drawn from ``seed``;
    flipped rows carry ``label_flipped: True`` (dataset.label_noise: a controlled corruption of the training labels)."""
    rows = [dict(r) for r in rows]
    n = round(fraction * len(rows))
    for i in random.Random(f"label_noise|{seed}").sample(range(len(rows)), n):
        r = rows[i]
        r["chosen"], r["rejected"], r["label_flipped"] = r["rejected"], r["chosen"], True
    return rows


def training_pairs(dataset_cfg: Optional[DatasetConfig], seed: int = 0) -> List[Dict[str, Any]]:
    """The train split of pair_source(dataset_cfg), with dataset.label_noise of its labels flipped."""
    cfg = pair_source(dataset_cfg)
    rows = pref_rows(cfg, "train")[: cfg.num_train]
    return flip_labels(rows, cfg.label_noise, cfg.seed) if cfg.label_noise > 0 else rows


def without_subsets(rows: Sequence[Dict[str, Any]], exclude: Sequence[str]) -> List[Dict[str, Any]]:
    """rows minus those whose subset is in ``exclude`` (judge.exclude_subsets); a name no row has, or leaving no row,
    is an error naming the key."""
    present = {r.get("subset") for r in rows}
    unknown = [s for s in exclude if s not in present]
    if unknown:
        raise ValueError(f"judge.exclude_subsets: {unknown} not among the training pairs' subsets "
                         f"{sorted(str(s) for s in present)}")
    kept = [r for r in rows if r.get("subset") not in set(exclude)]
    if not kept:
        raise ValueError(f"judge.exclude_subsets: {list(exclude)} leaves no training pair")
    return kept


def judge_training_pairs(dataset_cfg: Optional[DatasetConfig], judge_cfg: JudgeConfig, seed: int = 0,
                         extra_pairs: Sequence[Dict[str, Any]] = ()) -> List[Dict[str, Any]]:
    """training_pairs less judge.exclude_subsets, plus the judge.master_key_negatives hardening pairs, then the
    on-policy ``extra_pairs`` (judge.policy_pairs) mixed in at judge.policy_fraction of the draws."""
    rows = training_pairs(dataset_cfg, seed)
    if judge_cfg.exclude_subsets:
        rows = without_subsets(rows, judge_cfg.exclude_subsets)
    if judge_cfg.master_key_negatives > 0:
        rows = with_master_key_negatives(rows, judge_cfg.master_key_negatives, seed)
    if extra_pairs:
        rows = mix_in(rows, extra_pairs, judge_cfg.policy_fraction)
    return rows


def eval_pairs(dataset_cfg: Optional[DatasetConfig], limit: int = 0) -> Tuple[List[Dict[str, Any]], str]:
    """(the first ``limit`` test pairs of pair_source(dataset_cfg) (0: all), its dataset name); no pairs fails."""
    source = pair_source(dataset_cfg)
    rows = pref_rows(source, "test")
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ValueError(f"dataset.name: {source.name} has no test pairs")
    return rows, source.name


def heldout_pairs(dataset_cfg: Optional[DatasetConfig], n: int) -> List[Dict[str, Any]]:
    """The first n test pairs of pair_source(dataset_cfg): what a judge's held-out accuracy is measured on."""
    return pref_rows(pair_source(dataset_cfg), "test")[:n]


def pair_accuracy(scorer: Any, rows: Sequence[Dict[str, Any]], batch_size: int = 8,
                  progress: Optional[bool] = None) -> float:
    """Fraction of pairs whose chosen reply the scorer ranks above the rejected one (a tie counts 1/2). A
    reference-guided judge (judge.reference) is shown each row's reference, and a row's own rubric is used."""
    prompter = getattr(scorer, "prompter", None)  # rubric / LoRA judges; a BT RM reads the plain prompt
    request = prompter.request if prompter is not None else (lambda r: r["prompt"])
    wins = 0.0
    for start in tqdm(range(0, len(rows), batch_size), desc="judge held-out pairs", leave=False, disable=progress):
        batch = rows[start: start + batch_size]
        args = ([request(r) for r in batch], [r["chosen"] for r in batch], [r["rejected"] for r in batch])
        rubrics = [r.get("rubric") for r in batch]
        if prompter is not None and any(rubrics):  # a judge scores a row that has its own rubric with it
            sc, sr = scorer.score_pairs(*args, rubrics=rubrics)
        else:
            sc, sr = scorer.score_pairs(*args)
        wins += sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(sc, sr))
    return wins / max(len(rows), 1)


def saved_scorer_in(kind: str, path: Optional[Path]) -> bool:
    """Whether ``path`` holds a complete saved lora_judge / bt_rm (saves are atomic: the meta file means complete)."""
    if path is None or kind not in ("lora_judge", "bt_rm"):
        return False
    return (Path(path) / (JUDGE_META if kind == "lora_judge" else RM_META)).is_file()


def build_pair_scorer(reward_cfg: RewardConfig, judge_cfg: JudgeConfig, model_cfg: ModelConfig,
                      hardware: Optional[HardwareConfig] = None, checkpoint: Optional[str] = None, seed: int = 0,
                      train_dir: Optional[Path] = None, dataset_cfg: Optional[DatasetConfig] = None,
                      log_fn: Optional[Callable[..., None]] = None, share_with: Optional[torch.nn.Module] = None,
                      tokenizer: Any = None, extra_pairs: Sequence[Dict[str, Any]] = ()) -> Any:
    """reward.name -> scorer. ``checkpoint`` (or reward.checkpoint) loads a trained lora_judge/bt_rm; without one
    the judge/RM is trained first on the synthetic_prefs train split (plus ``extra_pairs``, the on-policy pairs of
    judge.policy_pairs) and saved to ``train_dir`` when given.

    ``share_with`` (with its ``tokenizer``) puts a rubric_judge / lora_judge on an existing model instead of loading
    a copy: the actor's peft model (rubric: adapters off; lora: a second adapter) or a plain frozen model (rubric)."""
    kind = reward_cfg.name
    if kind not in JUDGE_KINDS:
        raise ValueError(f"reward.name: {kind!r} is not a judge/RM ({', '.join(JUDGE_KINDS)})")
    device = resolve_device(hardware)
    dtype = hardware.dtype if hardware is not None else "float32"
    ckpt = checkpoint or reward_cfg.checkpoint
    if kind == "rubric_judge":
        if ckpt:
            log.warning("reward=rubric_judge is training-free; checkpoint %s is ignored", ckpt)
        model = None
        if share_with is not None:
            model = AdapterView(share_with, None) if hasattr(share_with, "peft_config") else share_with
        return build_rubric_judge(model_cfg, judge_cfg, device, dtype, model=model, tokenizer=tokenizer,
                                  dataset_cfg=dataset_cfg, seed=seed)
    if kind == "lora_judge":
        if ckpt:
            judge = load_lora_judge(ckpt, model_cfg, device, dtype, share_with=share_with, tokenizer=tokenizer)
            if judge.mode != judge_cfg.mode:
                raise ValueError(f"reward.checkpoint: lora_judge was trained in {judge.mode!r} mode, but "
                                 f"{judge_cfg.mode!r} is needed")
            return judge
        judge = build_lora_judge(model_cfg, judge_cfg, device, dtype, seed, dataset_cfg, share_with=share_with,
                                 tokenizer=tokenizer)
        rows = judge_training_pairs(dataset_cfg, judge_cfg, seed, extra_pairs)
        train_lora_judge(judge, rows, judge_cfg, seed, log_fn)
        if train_dir is not None:
            save_lora_judge(judge, train_dir, model_cfg)
        return judge
    if ckpt:
        if int(json.loads((Path(ckpt) / RM_META).read_text()).get("ensemble", 0)) > 1:
            return load_rm_ensemble(ckpt, model_cfg, dtype, reward_cfg.ensemble_agg,
                                    reward_cfg.ensemble_lcb_beta).to(device)
        return load_reward_model(ckpt, model_cfg, dtype).to(device)
    loss = pair_loss_fn(reward_cfg.robust, reward_cfg.r3m_lambda, reward_cfg.adaptive_rho,
                        reward_cfg.adaptive_tau_min, reward_cfg.adaptive_tau_max)
    rows = judge_training_pairs(dataset_cfg, judge_cfg, seed, extra_pairs)
    if reward_cfg.ensemble > 1:
        return train_rm_ensemble(reward_cfg, judge_cfg, model_cfg, rows, loss, device, dtype, seed, train_dir, log_fn)
    rm = build_reward_model(model_cfg, judge_cfg, dtype=dtype, seed=seed).to(device)
    train_bt_rm(rm, rows, judge_cfg, seed, log_fn, pair_loss=loss)
    if train_dir is not None:
        rm.save(train_dir, model_cfg, judge_cfg.lora)
    for p in rm.parameters():
        p.requires_grad_(False)
    return rm


def train_rm_ensemble(reward_cfg: RewardConfig, judge_cfg: JudgeConfig, model_cfg: ModelConfig,
                      rows: List[Dict[str, Any]], loss: Callable, device: torch.device, dtype: str, seed: int,
                      train_dir: Optional[Path], log_fn: Optional[Callable[..., None]]) -> RMEnsemble:
    """reward.ensemble members trained one after another on the same pairs (member k: seed + k for its init and
    batch order); their metrics carry ``member`` and count steps on one axis (member k: k * train_steps + step)."""
    ens = build_rm_ensemble(model_cfg, judge_cfg, reward_cfg.ensemble, reward_cfg.ensemble_agg,
                            reward_cfg.ensemble_lcb_beta, dtype, seed).to(device)
    for k in range(reward_cfg.ensemble):
        sink = None if log_fn is None else (
            lambda m, s, k=k: log_fn({**m, "member": float(k)}, k * judge_cfg.train_steps + s))
        log.info("bt_rm ensemble: training member %d/%d", k + 1, reward_cfg.ensemble)
        with ens.member(k) as member:
            train_bt_rm(member, rows, judge_cfg, seed + k, sink, pair_loss=loss)
    ens.frozen_prefix = None  # the members' shared frozen-layer cache is for training only: free it
    ens.eval()
    if train_dir is not None:
        ens.save(train_dir, model_cfg, judge_cfg.lora)
    return ens


def judge_cfg_for_signal(judge_cfg: JudgeConfig, signal: str) -> JudgeConfig:
    """The judge must be asked in the mode of the reward signal (pointwise score or pairwise win-probability)."""
    return judge_cfg if judge_cfg.mode == signal else replace(judge_cfg, mode=signal)
