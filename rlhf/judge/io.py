"""Shared helpers for trained judges/RMs: pair filtering, seeded batch sampling, metric logs."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
