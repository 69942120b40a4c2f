"""What a person reads instead of the logs: ``report.md`` per run, and run-vs-run comparisons.

- ``write_run_report(run_dir)``: the config in a few lines, held-out numbers before/after, the final training
  numbers, the training curves (``plots.png``: reward, EM, format rate, KL, reply length, losses, entropy), the judge /
  RM / SFT phase numbers when one was trained, and the best and worst scored sampled replies with their rewards
  (``samples.jsonl``: the top and bottom reply of every step).
- ``compare_runs(dirs, out_dir)`` (``python -m rlhf.report <run or sweep dir>...``): one table of every run's
  settings and numbers and one figure of overlaid curves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from rlhf.report.io import atomic_write_text
from rlhf.report.logger import read_metrics
from rlhf.report.plots import plot_overlaid

SAMPLES = "samples.jsonl"
CURVES = [("reward_mean", "batch reward"), ("em_flexible", "batch EM (flexible)"), ("kl", "KL to reference"),
          ("response_length", "reply tokens"), ("entropy", "entropy"), ("policy_loss", "policy loss")]


def extreme_samples(prompts: Sequence[str], responses: Sequence[str], rewards: Sequence[float],
                    step: int) -> List[Dict[str, Any]]:
    """The best and the worst reply of one step (prompts[i] belongs to responses[i]), for samples.jsonl."""
    if not responses:
        return []
    order = sorted(range(len(responses)), key=lambda i: rewards[i])
    picks = [("best", order[-1])] + ([("worst", order[0])] if len(order) > 1 else [])
    return [{"step": step, "kind": kind, "reward": float(rewards[i]), "prompt": prompts[i],
             "response": responses[i]} for kind, i in picks]


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def config_lines(cfg: Dict[str, Any]) -> List[str]:
    """The resolved config in a few lines: what was trained, on what, with which reward, how."""
    g = lambda *keys: _dig(cfg, keys)  # noqa: E731
    model = g("model", "name_or_path") if g("model", "source") == "hf" else g("model", "source")
    lora = f"LoRA r{g('model', 'lora', 'r')}" if g("model", "lora", "enabled") else "full fine-tuning"
    lines = [f"- model: {model} ({lora}); seed {g('seed')}; {g('steps')} steps"
             + (f", budget {g('max_train_seconds'):.0f} s" if g("max_train_seconds") else ""),
             f"- data: {g('dataset', 'name')}; reward: {g('reward', 'name')}"
             + (f" (judge {g('judge', 'mode')}, reference {g('judge', 'reference')})"
                if g("reward", "name") in ("rubric_judge", "lora_judge", "routed") else ""),
             f"- algo: {g('algo', 'name')}, lr {g('algo', 'lr')}, {g('algo', 'prompts_per_step')} prompts x "
             f"{g('algo', 'samples_per_prompt')} samples x {g('generation', 'max_new_tokens')} tokens",
             f"- hardware: {g('hardware', 'device')}, {g('hardware', 'dtype')}, rollouts {g('hardware', 'rollout')}"
             + (f", ZeRO-{g('hardware', 'deepspeed_stage')}" if g("hardware", "deepspeed_stage") else "")]
    return lines


def _dig(d: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(v: Any, pct: bool = False) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:.3f}"


def _quote(text: str, limit: int = 400) -> str:
    text = text.strip().replace("\r", "")
    text = text if len(text) <= limit else text[:limit] + " ..."
    return "\n".join("> " + line for line in (text.splitlines() or [""]))


def run_report_markdown(run_dir: Path, k: int = 3) -> str:
    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    steps = [r for r in rows if "reward_mean" in r and "phase" not in r]
    lines = [f"# Run report: {run_dir.name}", "", *config_lines(cfg), ""]
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    keys = [k_ for k_ in ("em_strict", "em_flexible", "win_rate", "reward_mean", "mean_response_tokens")
            if k_ in before or k_ in after]
    if keys:
        lines += [f"## Held-out ({(after or before).get('n', '?')} prompts, greedy)", "",
                  "| metric | before | after |", "|---|---:|---:|"]
        for key in keys:
            pct = key.startswith("em_") or key == "win_rate"
            lines.append(f"| {key} | {_num(before.get(key), pct)} | {_num(after.get(key), pct)} |")
        lines.append("")
    if steps:
        last = steps[-1]
        lines += [f"## Training: {len(steps)} steps", "", "| metric | last step |", "|---|---:|"]
        for key, label in CURVES + [("step_seconds", "seconds per step")]:
            if key in last:
                lines.append(f"| {label} | {_num(last[key])} |")
        lines.append("")
    phases = sorted({r["phase"] for r in rows if "phase" in r})
    for phase in phases:
        prows = [r for r in rows if r.get("phase") == phase]
        final = {k_: v for k_, v in prows[-1].items() if k_ not in ("step", "phase") and isinstance(v, (int, float))}
        shown = ", ".join(f"{k_.split('/', 1)[-1]} {v:.3f}" for k_, v in sorted(final.items())[:8])
        lines += [f"- {phase} phase: {len(prows)} logged steps; last: {shown}"]
    if phases:
        lines.append("")
    if (run_dir / "plots.png").is_file():
        lines += ["## Curves", "", "![training curves](plots.png)", ""]
    samples = _read_jsonl(run_dir / SAMPLES)
    if samples:
        latest = {(s["step"], s["kind"]): s for s in samples}  # a resumed run rewrites its later steps
        ranked = sorted(latest.values(), key=lambda s: s["reward"])
        for title, pick in (("Best-scored sampled replies", ranked[::-1][:k]), ("Worst-scored sampled replies",
                                                                              ranked[:k])):
            lines += [f"## {title}", ""]
            for s in pick:
                lines += [f"**step {s['step']}, reward {s['reward']:.3f}**", "", _quote(s["prompt"], 200), ">",
                          _quote(s["response"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_run_report(run_dir: Path) -> Path:
    return atomic_write_text(Path(run_dir) / "report.md", run_report_markdown(Path(run_dir)))


def run_dirs(paths: Sequence[str]) -> List[Path]:
    """Run dirs among the given paths: a run dir (has summary.json) or a sweep dir (its job subdirs that have one)."""
    out: List[Path] = []
    for p in map(Path, paths):
        if (p / "summary.json").is_file():
            out.append(p)
        elif p.is_dir():
            jobs = sorted((d for d in p.iterdir() if (d / "summary.json").is_file()),
                          key=lambda d: (len(d.name), d.name))
            if not jobs:
                raise ValueError(f"{p}: neither a run dir nor a sweep dir (no summary.json in it or below it)")
            out += jobs
        else:
            raise ValueError(f"{p}: no such directory")
    return out


def _overrides(run_dir: Path) -> List[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(x) for x in (yaml.safe_load(path.read_text()) or [])] if path.is_file() else []


def labels(dirs: Sequence[Path]) -> List[str]:
    """Each run's dir name plus the command-line overrides that differ between the runs compared."""
    lists = [_overrides(d) for d in dirs]
    common = set.intersection(*(set(x) for x in lists)) if len(lists) > 1 else set()
    return [f"{d.name}: " + " ".join(x for x in items if x not in common) if any(x not in common for x in items)
            else d.name for d, items in zip(dirs, lists)]


def compare_runs(paths: Sequence[str], out_dir: Path) -> Tuple[Path, Optional[Path]]:
    """compare.md (one row per run) and curves.png (overlaid training curves) in out_dir."""
    dirs = run_dirs(paths)
    lines = ["| run | algo | reward | steps | EM strict before -> after | EM flexible before -> after | "
             "win rate after | last batch reward | wall s |", "|---|---|---|---:|---|---|---:|---:|---:|"]
    curves: Dict[str, Dict[str, List[Tuple[float, float]]]] = {}
    for d, label in zip(dirs, labels(dirs)):
        s = json.loads((d / "summary.json").read_text())
        cfg = _config(d)
        b, a = s.get("eval_before") or {}, s.get("eval_after") or {}
        lines.append(f"| {label} | {_dig(cfg, ['algo', 'name']) or '-'} | {_dig(cfg, ['reward', 'name']) or '-'} | "
                     f"{s.get('step', '-')} | {_num(b.get('em_strict'), True)} -> {_num(a.get('em_strict'), True)} | "
                     f"{_num(b.get('em_flexible'), True)} -> {_num(a.get('em_flexible'), True)} | "
                     f"{_num(a.get('win_rate'), True)} | {_num((s.get('final') or {}).get('reward_mean'))} | "
                     f"{_num((s.get('wall_seconds') or {}).get('total'))} |")
        rows = read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
        for key, _ in CURVES:
            pts = [(r["step"], r[key]) for r in rows if "phase" not in r and isinstance(r.get(key), (int, float))]
            if pts:
                curves.setdefault(key, {})[label] = pts
    out_dir = Path(out_dir)
    md = atomic_write_text(out_dir / "compare.md", f"# {len(dirs)} runs\n\n" + "\n".join(lines) + "\n\n"
                           + ("![curves](curves.png)\n" if curves else ""))
    png = plot_overlaid(curves, dict(CURVES), out_dir / "curves.png") if curves else None
    return md, png
