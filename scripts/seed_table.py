"""Per-seed before/after table of a multirun over seeds (README "What make run shows"):

    python -m rlhf.train -m experiment=quickstart seed=0,1,2 hydra.sweep.dir=outputs/quickstart_seeds
    python scripts/seed_table.py outputs/quickstart_seeds

Reads each job's summary.json (the sweep's summary.jsonl names the jobs) and writes <sweep>/seed_table.md and .json:
held-out greedy strict and flexible EM before and after training, mean reply tokens after, wall time, and the mean
and sample std of the changes over seeds. No argparse: one path.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List


def wall_seconds(job_dir: Path, summary: Dict) -> float:
    """Total wall time of the run: summary.json's wall_seconds, else the summary.md "total" line (older runs)."""
    if "wall_seconds" in summary:
        return float(summary["wall_seconds"]["total"])
    m = re.search(r"\| total \| ([0-9.]+) s", (job_dir / "summary.md").read_text())
    return float(m.group(1)) if m else float("nan")


def job_row(job_dir: Path, seed: str) -> Dict[str, float]:
    s = json.loads((job_dir / "summary.json").read_text())
    if "eval_before" not in s or "eval_after" not in s:
        raise SystemExit(f"{job_dir}: needs eval_before and eval_after in summary.json")
    b, a = s["eval_before"], s["eval_after"]
    return {"seed": seed, "n": a["n"], "steps": s["step"], "strict_before": b["em_strict"],
            "strict_after": a["em_strict"], "flexible_before": b["em_flexible"], "flexible_after": a["em_flexible"],
            "tokens_after": a["mean_response_tokens"], "wall_s": wall_seconds(job_dir, s)}


def spread(xs: List[float]) -> str:
    mean = f"{statistics.fmean(xs):+.1f}".replace("-0.0", "+0.0")
    return mean + (f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else "")


def main(sweep: Path) -> str:
    jobs = [json.loads(x) for x in (sweep / "summary.jsonl").read_text().splitlines() if x.strip()]
    rows, failed = [], []
    for j in jobs:
        if j["status"] != "ok":
            failed.append(f"job {j['job']} ({j['status']})")
            continue
        seed = re.search(r"(?:^| )seed=(\S+)", j.get("overrides", ""))
        rows.append(job_row(sweep / j["dir"], seed.group(1) if seed else "?"))
    if not rows:
        raise SystemExit(f"{sweep}: no finished job")
    pct = lambda x: f"{100 * x:.0f}"  # noqa: E731
    lines = ["| seed | steps | strict EM before -> after | flexible EM before -> after | reply tokens after | wall |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['steps']} | {pct(r['strict_before'])} -> {pct(r['strict_after'])} % | "
                     f"{pct(r['flexible_before'])} -> {pct(r['flexible_after'])} % | {r['tokens_after']:.0f} | "
                     f"{r['wall_s'] / 60:.1f} min |")
    d_strict = [round(100 * (r["strict_after"] - r["strict_before"]), 6) for r in rows]
    d_flex = [round(100 * (r["flexible_after"] - r["flexible_before"]), 6) for r in rows]
    lines.append(f"| mean ± std over {len(rows)} seeds | | {spread(d_strict)} pts | {spread(d_flex)} pts | | "
                 f"{statistics.fmean(r['wall_s'] for r in rows) / 60:.1f} min |")
    if failed:
        lines.append(f"\nNot finished: {', '.join(failed)}.")
    md = "\n".join(lines) + f"\n\nHeld-out: {rows[0]['n']} test problems, greedy.\n"
    (sweep / "seed_table.md").write_text(md)
    (sweep / "seed_table.json").write_text(json.dumps({"rows": rows, "strict_change_pts": d_strict,
                                                       "flexible_change_pts": d_flex, "failed": failed}, indent=1))
    return md


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/seed_table.py SWEEP_DIR")
    print(main(Path(sys.argv[1])))
