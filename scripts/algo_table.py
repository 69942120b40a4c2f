"""The algorithm comparison table from a multirun of conf/experiment/algo_compare.yaml.

    python scripts/algo_table.py outputs/algo_compare [outputs/algo_compare_base]

Reads each job's summary.json and metrics.jsonl (the sweep's summary.jsonl names them), groups by algorithm, and
writes <sweep>/algo_table.md and .json: mean and spread (sample std over seeds) of held-out strict and flexible EM
after training, steps done inside the budget, and the training reward of the last three steps. The optional second
dir is a run with eval_before=true whose "before" evaluation is the base model's row. No argparse: two paths.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List


def mean_sd(xs: List[float], scale: float = 1.0, digits: int = 1) -> str:
    if not xs:
        return "-"
    m = statistics.fmean(xs) * scale
    if len(xs) == 1:  # one seed: no spread to report
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs) * scale:.{digits}f}"


def job_row(job_dir: Path) -> Dict[str, float]:
    s = json.loads((job_dir / "summary.json").read_text())
    rows = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [r for r in rows if "reward_mean" in r]
    after = s.get("eval_after", {})
    return {"steps": float(s["step"]), "em_strict": after.get("em_strict", float("nan")),
            "em_flexible": after.get("em_flexible", float("nan")),
            "reward_last3": statistics.fmean(r["reward_mean"] for r in train[-3:]) if train else float("nan"),
            "step_seconds": statistics.fmean(r["step_seconds"] for r in train) if train else float("nan")}


def main(sweep: Path, base: Path | None) -> str:
    jobs = [json.loads(x) for x in (sweep / "summary.jsonl").read_text().splitlines() if x.strip()]
    by_algo: Dict[str, List[Dict[str, float]]] = {}
    failed = []
    for j in jobs:
        if j["status"] != "ok":
            failed.append(f"{j['overrides']} ({j['status']})")
            continue
        by_algo.setdefault(j["algo"], []).append(job_row(sweep / j["dir"]))
    lines = ["| algorithm | seeds | steps in budget | s / step | held-out strict EM % | held-out flexible EM % | "
             "train reward, last 3 steps |", "|---|---|---|---|---|---|---|"]
    if base is not None:
        before = json.loads((base / "summary.json").read_text())["eval_before"]
        lines.append(f"| base model (no training) | - | - | - | {100 * before['em_strict']:.1f} | "
                     f"{100 * before['em_flexible']:.1f} | - |")
    table = {}
    for algo, rs in by_algo.items():
        col = lambda k: [r[k] for r in rs]  # noqa: E731
        table[algo] = rs
        lines.append(f"| {algo} | {len(rs)} | {mean_sd(col('steps'))} | {mean_sd(col('step_seconds'))} | "
                     f"{mean_sd(col('em_strict'), 100)} | {mean_sd(col('em_flexible'), 100)} | "
                     f"{mean_sd(col('reward_last3'), 1, 3)} |")
    if failed:
        lines.append("")
        lines.append("failed jobs: " + "; ".join(failed))
    md = "\n".join(lines) + "\n"
    (sweep / "algo_table.md").write_text(md)
    (sweep / "algo_table.json").write_text(json.dumps(table, indent=1))
    return md


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python scripts/algo_table.py SWEEP_DIR [BASE_RUN_DIR]")
    print(main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else None))
