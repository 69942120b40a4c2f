"""The closing summary of a training run: held-out metrics before/after, training reward early vs late, judge
diagnostics, wall time per phase, and where the outputs are. Printed to the terminal and written as summary.md."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

# held-out metric key -> label, in display order (a key the task does not report is left out)
EVAL_LABELS = [
    ("em_strict", "EM strict (`#### N`)"), ("em_flexible", "EM flexible (last number)"),
    ("win_rate", "win rate vs reference reply"), ("reward_mean", "reward of greedy replies"),
    ("reference_reward_mean", "reward of reference replies"), ("mean_response_tokens", "mean reply tokens"),
]
# training metrics compared between the first and the last steps
TRAIN_LABELS = [
    ("reward_mean", "batch reward"), ("em_flexible", "batch EM (flexible)"), ("reward/format_rate", "format rate"),
    ("reward/judge_score_correct", "judge score of correct replies"),
    ("reward/judge_score_wrong", "judge score of wrong replies"),
    ("reward/judge_group_accuracy", "judge ranks right above wrong (same prompt)"),
    ("kl", "KL to reference / sequence"),
    ("response_length", "reply tokens (sampled)"),
]


def _fmt(v: Any, pct: bool = False) -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def _window_mean(rows: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(vals) / len(vals) if vals else None


def summary_markdown(evals: Dict[str, Dict[str, Any]], steps: List[Dict[str, Any]], phases: Dict[str, float],
                     paths: Dict[str, str], title: str, extra: Optional[Dict[str, Any]] = None) -> str:
    """Markdown tables; `steps` are the training rows of metrics.jsonl (one per RL step)."""
    lines = [f"# {title}", ""]
    before, after = evals.get("before"), evals.get("after")
    if before or after:
        n = (after or before or {}).get("n")
        lines += [f"Held-out, greedy ({n} prompts):", "", "| metric | before | after | change |", "|---|---:|---:|---:|"]
        for key, label in EVAL_LABELS:
            b, a = (before or {}).get(key), (after or {}).get(key)
            if b is None and a is None:
                continue
            pct = key.startswith("em_") or key == "win_rate"
            change = (f"{100 * (a - b):+.1f} pts" if pct else f"{a - b:+.3f}") if isinstance(a, (int, float)) and \
                isinstance(b, (int, float)) else "-"
            lines.append(f"| {label} | {_fmt(b, pct)} | {_fmt(a, pct)} | {change} |")
        lines.append("")
    if steps:
        k = max(1, min(3, len(steps) // 3))
        first, last = steps[:k], steps[-k:]
        lines += [f"Training ({len(steps)} steps; mean of the first {k} vs the last {k}):", "",
                  f"| metric | steps 1-{k} | steps {len(steps) - k + 1}-{len(steps)} |", "|---|---:|---:|"]
        for key, label in TRAIN_LABELS:
            a, b = _window_mean(first, key), _window_mean(last, key)
            if a is None and b is None:
                continue
            lines.append(f"| {label} | {_fmt(a)} | {_fmt(b)} |")
        lines.append("")
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    if extra:
        lines.append("")
    if phases:
        total = sum(phases.values())
        lines += ["| phase | wall time |", "|---|---:|"]
        lines += [f"| {name} | {sec:.1f} s |" for name, sec in phases.items()]
        lines += [f"| total | {total:.1f} s ({total / 60:.1f} min) |", ""]
    lines += [f"- {name}: `{path}`" for name, path in paths.items()]
    return "\n".join(lines) + "\n"
