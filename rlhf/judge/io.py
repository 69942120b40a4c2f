"""Shared helpers for trained judges/RMs: pair filtering, seeded batch sampling, metric logs."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from rlhf.config import model_config_from_dict

log = logging.getLogger(__name__)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def drop_identical_pairs(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], int]:
    """Pairs whose chosen == rejected (after stripping) carry no preference: drop them and return how many."""
    kept = [r for r in rows if str(r["chosen"]).strip() != str(r["rejected"]).strip()]
    dropped = len(rows) - len(kept)
    if dropped:
        log.warning("dropped %d preference pairs with chosen == rejected", dropped)
    return kept, dropped


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> Iterator[List[int]]:
    """``steps`` batches drawn by seeded epochs over a permutation of range(n)."""
    if n <= 0:
        raise ValueError("no training pairs")
    rng = random.Random(seed)
    order: List[int] = []
    for _ in range(steps):
        batch: List[int] = []
        while len(batch) < min(batch_size, n):
            if not order:
                order = list(range(n))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


def fit_pairs(params: List[torch.nn.Parameter], rows: Sequence[Dict[str, Any]], cfg: Any, seed: int,
              batch_loss: Callable[[List[Dict[str, Any]]], Dict[str, torch.Tensor]],
              sink: Callable[[Dict[str, float], int], None], dropped: int = 0, desc: str = "judge") -> List[Dict[str, float]]:
    """The training loop shared by the LoRA judge and the BT reward model: judge.train_steps AdamW steps (lr
    judge.lr, grad-norm clip 1.0) over seeded batches of judge.batch_size pairs. batch_loss(rows) returns "loss" and
    any other scalars to log; every step's metrics go to sink, with a progress bar and a log line every tenth."""
    if not params:
        raise ValueError(f"{desc}: the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    history: List[Dict[str, float]] = []
    every = max(1, cfg.train_steps // 10)
    bar = tqdm(total=cfg.train_steps, desc=f"train {desc}", leave=False, disable=None)
    t0 = time.perf_counter()
    for step, idx in enumerate(batch_indices(len(rows), cfg.batch_size, cfg.train_steps, seed)):
        out = batch_loss([rows[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        m = {k: float(v.detach()) for k, v in out.items()}
        m.update(grad_norm=float(grad_norm), dropped_identical=float(dropped))
        history.append(m)
        sink(m, step)
        bar.update(1)
        acc = m.get("accuracy", m.get("verdict_accuracy", float("nan")))  # RM: pair order; judge: verdict token
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{acc:.2f}")
        if (step + 1) % every == 0 or step + 1 == cfg.train_steps:
            elapsed = time.perf_counter() - t0
            log.info("%s step %d/%d: loss %.4f, batch accuracy %.3f (%.0f s, ~%.0f s left)", desc, step + 1,
                     cfg.train_steps, m["loss"], acc, elapsed, elapsed / (step + 1) * (cfg.train_steps - step - 1))
    bar.close()
    return history


class MetricSink:
    """Sends training metrics to ``log_fn(metrics, step, prefix=...)`` when given, else appends to a JSONL file."""

    def __init__(self, log_fn: Optional[Callable[..., None]] = None, path: Optional[Path] = None,
                 prefix: str = "judge"):
        self.log_fn, self.path, self.prefix = log_fn, path, prefix
        self.history: List[Dict[str, float]] = []

    def __call__(self, metrics: Dict[str, float], step: int) -> None:
        self.history.append(dict(metrics, step=step))
        if self.log_fn is not None:
            self.log_fn(metrics, step, prefix=self.prefix)
        elif self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(dict(metrics, step=step)) + "\n")


def read_checkpoint_meta(path: str | Path, meta_name: str, kind: str, model_cfg=None):
    """(meta dict, model config) of a saved judge/RM dir; the model config recorded at training time unless given."""
    path = Path(path)
    if not (path / meta_name).is_file():
        raise FileNotFoundError(f"reward.checkpoint: {path} has no {meta_name} (not a {kind} checkpoint)")
    meta = json.loads((path / meta_name).read_text())
    if model_cfg is None:
        if not meta.get("model"):
            raise ValueError(f"reward.checkpoint: {path}/{meta_name} records no model; pass model_cfg")
        model_cfg = model_config_from_dict(meta["model"])
    return meta, model_cfg
