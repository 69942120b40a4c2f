"""Run logging: metrics.jsonl (always), wandb (offline by default, never needs the network), TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional

from rlhf.config import LoggingConfig
from rlhf.report.io import atomic_write_text

log = logging.getLogger(__name__)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


# prefixes whose rows are counted in RL steps (eval after step N); any other prefix is a phase with its own steps
RL_STEP_PREFIXES = ("eval",)


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, config_dict: Dict[str, Any], name: Optional[str] = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wandb = None
        self._tb = None
        self._axes: set = set()  # wandb keys whose x-axis is defined
        if cfg.wandb != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self._wandb = wandb.init(project=cfg.wandb_project, mode=cfg.wandb, dir=str(run_dir),
                                         config=config_dict, name=name, reinit="finish_previous")
            except Exception as e:  # tracking must never take a run down
                log.warning("wandb disabled: %s", e)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume: drop RL rows written after the checkpoint, so the file matches an uninterrupted run.

        Rows of another phase (e.g. judge training, ``"phase": "judge"``) count their own steps and are kept."""
        if not self.path.exists():
            return
        rows = [(line, json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()]
        keep = [line for line, row in rows if "phase" in row or row.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def log(self, metrics: Dict[str, Any], step: int, prefix: str = "") -> None:
        """One row; keys become ``<prefix>/<key>``. A prefix other than those in RL_STEP_PREFIXES names a phase with
        its own step counter (judge training): its rows are marked ``"phase": prefix``."""
        phase = prefix if prefix and prefix not in RL_STEP_PREFIXES else ""
        row: Dict[str, Any] = {"step": step, **({"phase": phase} if phase else {}),
                               **{(f"{prefix}/{k}" if prefix else k): _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._wandb is not None:
            # wandb's own step may only grow, but a phase (judge training) restarts at 0: every key gets its phase's
            # step as its x-axis (train/step or <prefix>/step) and wandb keeps counting calls.
            axis = f"{phase or 'train'}/step"
            for key in [k for k in [axis, *numeric] if k not in self._axes]:
                self._wandb.define_metric(key, **({} if key == axis else {"step_metric": axis}))
                self._axes.add(key)
            self._wandb.log({**numeric, axis: step})
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class NullLogger:
    """MetricsLogger stand-in for ranks other than 0: nothing is written."""

    def log(self, metrics: Dict[str, Any], step: int, prefix: str = "") -> None:
        return None

    def truncate_after(self, step: int) -> None:
        return None

    def close(self) -> None:
        return None
