"""Training curves from metrics.jsonl: reward, EM, KL and length together (reward hacking shows up side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlhf.report.logger import read_metrics  # noqa: E402

PANELS = [
    ("reward_mean", "reward (mean)"),
    ("sft/loss", "SFT loss (reply NLL per token)"),
    ("em_flexible", "batch EM (flexible)"),
    ("reward/format_rate", "batch format rate (#### N line)"),
    ("kl", "KL to reference (per sequence)"),
    ("response_length", "response length (tokens)"),
    ("policy_loss", "policy loss"),
    ("value_loss", "value loss"),
    ("entropy", "entropy"),
    ("clip_frac", "clip fraction"),
    ("eval/em_flexible", "test EM (greedy, flexible)"),
    ("eval/em_strict", "test EM (greedy, strict)"),
    ("eval/win_rate", "held-out win rate vs reference reply"),
    ("eval/reward_mean", "held-out reward (greedy)"),
]


def save_figure(fig: "plt.Figure", out_path: Path) -> Path:
    """Writes the figure as PNG atomically (temp file + rename) and closes it."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def plot_metrics(metrics_path: Path, out_path: Path, keys: Optional[List[str]] = None) -> Optional[Path]:
    rows = read_metrics(metrics_path)
    panels = [(k, t) for k, t in PANELS if (keys is None or k in keys) and any(k in r for r in rows)]
    if not panels:
        return None
    cols = 3
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (key, title) in zip(axes.flat, panels):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_curves(xs: List[float], series: Dict[str, List[float]], out_path: Path, title: str, xlabel: str,
                ylabel: str) -> Path:
    """One panel, one line per series (e.g. accuracy against the judge-call fraction per routing rule)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", markersize=4, label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)


def plot_overlaid(curves: Dict[str, Dict[str, List[Tuple[float, float]]]], titles: Dict[str, str],
                  out_path: Path) -> Path:
    """One panel per metric, one line per run: curves[metric][run label] = [(step, value), ...]."""
    keys = list(curves)
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.1 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, pts in curves[key].items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label[:40])
        ax.set_title(titles.get(key, key), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=min(3, len(labels)))
        fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(labels) - 1) // 3), 1, 1))
    else:
        fig.tight_layout()
    return save_figure(fig, out_path)
