"""Sweep summary: one row per job of a Hydra multirun (overrides, final reward, EM, KL).

Registered as a Hydra callback in conf/config.yaml, so `python -m rlhf.train -m algo.kl_coef=0.01,0.05 seed=1,2`
ends by writing summary.jsonl, summary.csv and summary.md into the sweep dir, whatever the launcher (basic, submitit
local or SLURM: the callback runs in the launching process once every job has returned). Rows come from the job
directories themselves (.hydra/ and the summary.json each run writes), so `python -m rlhf.report.sweep SWEEP_DIR`
rebuilds the table after the fact, e.g. for a sweep whose callback never ran because a job failed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rlhf.report.io import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ["job", "overrides", "status", "step", "reward_mean", "kl", "em_flexible", "em_strict", "win_rate",
           "train_em_flexible", "dir"]


def _job_dirs(sweep_dir: Path) -> List[Path]:
    """Directories under the sweep dir holding a job's .hydra/overrides.yaml (submitit's own folder excluded)."""
    found = []
    for f in sweep_dir.rglob(".hydra/overrides.yaml"):
        job = f.parent.parent
        if ".submitit" not in job.relative_to(sweep_dir).parts:
            found.append(job)
    return found


def _job_num(job: Path) -> Optional[int]:
    try:
        return int(OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.job.num)
    except Exception:
        return None


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def collect_rows(sweep_dir: Path) -> List[Dict[str, Any]]:
    jobs = []
    for job in _job_dirs(Path(sweep_dir)):
        overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
        jobs.append((_job_num(job), job, overrides))
    jobs.sort(key=lambda j: (j[0] is None, j[0] if j[0] is not None else 0, str(j[1])))
    # Overrides shared by every job are left out of the overrides column (kept when there is a single job); the keys
    # whose values differ between jobs (the swept ones) also get a column each.
    common = {o for _, _, ovs in jobs for o in ovs if all(o in other for _, _, other in jobs)} if len(jobs) > 1 else set()
    swept = sorted({_split(o)[0] for _, _, ovs in jobs for o in ovs if o not in common}) if len(jobs) > 1 else []
    rows = []
    for num, job, ovs in jobs:
        row: Dict[str, Any] = {"job": num, "overrides": " ".join(o for o in ovs if o not in common)}
        row.update({k: dict(_split(o) for o in ovs).get(k) for k in swept})
        summary_file = job / "summary.json"
        if summary_file.is_file():
            s = json.loads(summary_file.read_text())
            final, after = s.get("final") or {}, s.get("eval_after") or {}
            row.update(status="ok", step=s.get("step"), reward_mean=final.get("reward_mean"), kl=final.get("kl"),
                       em_flexible=after.get("em_flexible"), em_strict=after.get("em_strict"),
                       win_rate=after.get("win_rate"), train_em_flexible=final.get("em_flexible"))
        else:
            row.update(status="failed" if (job / "metrics.jsonl").exists() or (job / "config.yaml").exists()
                       else "not started")
        row["dir"] = str(job.relative_to(sweep_dir))
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_summary(sweep_dir: Path) -> List[Dict[str, Any]]:
    """Writes summary.jsonl / summary.csv / summary.md into sweep_dir and returns the rows."""
    sweep_dir = Path(sweep_dir)
    rows = collect_rows(sweep_dir)
    keys = [k for k in rows[0] if k not in COLUMNS] if rows else []
    header = ["job", *keys, "status", "step", "reward_mean", "kl", "em_flexible", "em_strict", "win_rate",
              "train_em_flexible", "overrides", "dir"]
    atomic_write_text(sweep_dir / "summary.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in header})
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    md_cols = [c for c in header if c != "dir"]
    md = ["| " + " | ".join(md_cols) + " |", "|" + "---|" * len(md_cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in md_cols) + " |" for r in rows]
    atomic_write_text(sweep_dir / "summary.md", f"# Sweep {sweep_dir}\n\n" + "\n".join(md) + "\n\n"
                      "reward_mean, kl, train_em_flexible: last training step; em_*: greedy eval after training.\n")
    return rows


class SweepSummaryCallback(Callback):
    """Hydra callback: after a multirun, the sweep summary in hydra.sweep.dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = write_summary(sweep_dir)
        log.info("sweep summary (%d jobs): %s", len(rows), sweep_dir / "summary.md")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m rlhf.report.sweep SWEEP_DIR", file=sys.stderr)
        sys.exit(2)
    write_summary(Path(sys.argv[1]))
    print((Path(sys.argv[1]) / "summary.md").read_text())
