"""`python -m rlhf.tables experiment=table_<name> [quick=true] ['extra=[model=...,hardware=...]']`: one paper table.

A table is one experiment YAML (conf/experiment/table_<name>.yaml) that sets ``table``: the entry point its rows run
(``rlhf.evaluate``, ``rlhf.train`` or ``rlhf.sft``), the overrides shared by every row, one override list per row, the
seeds, the columns (dotted keys into each row's result JSON: an evaluate task's OUT.json, or a run's summary.json), the
paper's numbers where the paper states them, and the sentence that says what the embedded-scale table does and does
not reproduce. Each row x seed runs as its own process with its exact command recorded; a finished row is reused
when the same command runs again (``reuse``), and a row whose command differs from a finished row of another table
only in where it writes (``output=``, ``hydra.run.dir=``) takes that row's result (``twin_of``: Table 2's 0- and
6-demonstration and rank-16 rows are Table 1's). Writes ``<out_dir>/<name>.json`` and ``.md``: mean and spread over
seeds, the paper's column, wall time per row, the commands, the machine and its load. A row with ``baseline: <label>``
also gets its paired difference to that row in the first column, seed by seed (for tables whose rows of one seed share
their data, where the paired difference is the evidence and separated means are not).

Paper scale is the same file with the scale overrides appended to every row:
``python -m rlhf.tables experiment=table_actor 'extra=[model=qwen2_5_7b_lora,dataset=gsm8k,hardware=zero3_gpu]'``.
``dry_run=true`` prints the commands instead of running them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rlhf.report.io import atomic_write_json, atomic_write_text

log = logging.getLogger("rlhf")

ENTRIES = {"evaluate": "rlhf.evaluate", "train": "rlhf.train", "sft": "rlhf.sft"}


@dataclass
class TableRow:
    label: str = MISSING
    overrides: List[str] = field(default_factory=list)
    entry: Optional[str] = None  # another entry point for this row (e.g. the base model's row: evaluate)
    common: bool = True  # false: this row takes neither table.common nor table.quick (it runs another entry point)
    quick: List[str] = field(default_factory=list)  # this row's own quick-setting overrides
    # another row's label: the markdown adds this row's paired difference to it in the first column, seed by seed
    # (rows whose seeds share data, e.g. dataset.seed=${seed}, compare paired rather than by separated means)
    baseline: Optional[str] = None


@dataclass
class TableColumn:
    # dotted path into the row's result JSON (e.g. sections.Chat, eval_after.em_strict); "a|b": the first present
    key: str = MISSING
    label: str = MISSING
    scale: float = 1.0  # 100: a fraction shown in percent


@dataclass
class TableSpec:
    name: str = MISSING
    title: str = ""
    entry: str = "evaluate"  # evaluate | train | sft
    common: List[str] = field(default_factory=list)
    quick: List[str] = field(default_factory=list)  # appended with quick=true (the CI smoke setting)
    rows: List[TableRow] = field(default_factory=list)
    columns: List[TableColumn] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    paper: Dict[str, Any] = field(default_factory=dict)  # row label -> {column label: the paper's number}
    paper_source: str = ""
    note: str = ""  # what the embedded-scale numbers do and do not reproduce
    # the overrides this table's paper-scale run takes (`extra=...`), where they differ from the usual 7B + hub data +
    # multi-GPU presets (tests/unit/test_tables.py composes every row with them); documentation, not applied by itself
    paper_extra: List[str] = field(default_factory=list)


@dataclass
class TablesConfig:
    table: TableSpec = MISSING
    quick: bool = False
    extra: List[str] = field(default_factory=list)  # appended to every row (paper scale: model=..., hardware=...)
    out_dir: str = "results"
    reuse: bool = True
    dry_run: bool = False
    python: str = sys.executable


def spec_errors(t: TableSpec) -> List[str]:
    errors = []
    for entry in [t.entry] + [r.entry for r in t.rows if r.entry is not None]:
        if entry not in ENTRIES:
            errors.append(f"table.entry: {entry!r} is not one of {list(ENTRIES)}")
    if not re.fullmatch(r"[a-z0-9_]+", t.name or ""):
        errors.append(f"table.name: {t.name!r} must be lowercase letters, digits and _ (it names the result files)")
    if not t.rows:
        errors.append("table.rows: a table needs at least one row")
    if not t.columns:
        errors.append("table.columns: a table needs at least one column")
    if not t.seeds:
        errors.append("table.seeds: give at least one seed")
    labels = [r.label for r in t.rows]
    if len(set(labels)) != len(labels):
        errors.append(f"table.rows: duplicate labels {sorted({x for x in labels if labels.count(x) > 1})}")
    for i, r in enumerate(t.rows):
        if r.baseline is not None and (r.baseline not in labels or r.baseline == r.label):
            errors.append(f"table.rows[{i}].baseline: {r.baseline!r} is not another row of this table "
                          f"(a rows subset must keep the baseline rows)")
    unknown = [k for k in t.paper if k not in labels]
    if unknown:
        errors.append(f"table.paper: rows {unknown} are not in table.rows")
    return errors


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "row"


def row_entry(t: TableSpec, row: TableRow) -> str:
    return row.entry or t.entry


def row_command(cfg: TablesConfig, row: TableRow, seed: int, run_dir: Path) -> List[str]:
    t = cfg.table
    entry = row_entry(t, row)
    quick = ([*(t.quick if row.common else []), *row.quick]) if cfg.quick else []
    args = [*(t.common if row.common else []), *row.overrides, f"seed={seed}", *quick, *cfg.extra]
    if entry == "evaluate":
        args.append(f"output={run_dir / 'result.json'}")
    return [cfg.python, "-m", ENTRIES[entry], *args, f"hydra.run.dir={run_dir}"]


def result_path(entry: str, run_dir: Path) -> Path:
    return run_dir / ("result.json" if entry == "evaluate" else "summary.json")


def row_identity(command: str) -> tuple:
    """What a row run computes: its command's arguments without where it writes (output=, hydra.run.dir=), in any
    order (its overrides set distinct keys)."""
    return tuple(sorted(a for a in shlex.split(command) if not a.startswith(("output=", "hydra.run.dir="))))


def twin_of(runs_root: Path, command: str, entry: str, run_dir: Path) -> Optional[Path]:
    """A finished row run elsewhere under runs_root (another table's) with the same identity as ``command``."""
    ident = row_identity(command)
    for stamp in sorted(runs_root.glob("*/*/table_command.txt")):
        other = stamp.parent
        if other.resolve() != run_dir.resolve() and result_path(entry, other).is_file() \
                and row_identity(stamp.read_text()) == ident:
            return other
    return None


def dig(obj: Any, dotted: str) -> Optional[float]:
    """The number at a dotted path (list items by index; "a|b": the first alternative present), else None."""
    for alternative in dotted.split("|"):
        node = obj
        for part in alternative.split("."):
            if isinstance(node, list) and part.isdigit():
                node = node[int(part)] if int(part) < len(node) else None
            else:
                node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            return float(node)
    return None


def mean_spread(xs: List[float]) -> Dict[str, Optional[float]]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def paired(row: Dict[str, Any], base: Dict[str, Any], column: str) -> Dict[str, Any]:
    """row minus base in ``column``, seed by seed over the seeds both have: mean, sd and the per-seed differences."""
    mine, theirs = row["by_seed"][column], base["by_seed"][column]
    seeds = [s for s in mine if s in theirs and mine[s] is not None and theirs[s] is not None]
    diffs = [mine[s] - theirs[s] for s in seeds]
    return {"baseline": base["label"], "column": column, "seeds": seeds, "diffs": diffs, **mean_spread(diffs)}


def fmt_paired(p: Optional[Dict[str, Any]]) -> str:
    if not p or p["mean"] is None:
        return "-"
    return f"{p['mean']:+.1f} ({', '.join(f'{d:+.1f}' for d in p['diffs'])}) vs {p['baseline']}"


def fmt(ms: Dict[str, Optional[float]]) -> str:
    if ms["mean"] is None:
        return "-"
    return f"{ms['mean']:.1f}" + (f" ± {ms['std']:.1f}" if ms["std"] is not None else "")


def machine() -> Dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_1_5_15": [round(x, 2) for x in load]}


def markdown(res: Dict[str, Any]) -> str:
    cols = [c["label"] for c in res["columns"]]
    paper = res["paper"]
    with_pairs = any(r.get("paired") for r in res["rows"])
    lines = [f"# {res['title'] or res['name']}", "", res["note"], "" if res["note"] else "",
             f"Scale: {res['scale']}; seeds {res['seeds']}; {res['date']}; machine: {res['machine_start']['cpus']} "
             f"CPUs, load {res['machine_start']['loadavg_1_5_15']} at start, {res['machine_end']['loadavg_1_5_15']} "
             f"at end; wall time of the rows {sum(r['wall_seconds'] for r in res['rows']) / 60:.1f} min"
             + (f" ({res['reused']} of {len(res['rows']) * len(res['seeds'])} row runs reused from an earlier "
                f"run of the same command, this table's or another's, timed then; the load figures are this "
                f"invocation's)" if res.get("reused") else "")
             + ".", "",
             "| row | " + " | ".join(cols) + " | wall s |" + (" paper |" if paper else ""),
             "|---|" + "---|" * (len(cols) + 1 + (1 if paper else 0))]
    if with_pairs:
        cols_head = [cols[0], f"{cols[0]}: minus the baseline row, same seed (per seed)", *cols[1:]]
        lines[-2:] = ["| row | " + " | ".join(cols_head) + " | wall s |" + (" paper |" if paper else ""),
                      "|---|" + "---|" * (len(cols_head) + 1 + (1 if paper else 0))]
    for r in res["rows"]:
        cells = [fmt(r["columns"][c]) for c in cols]
        if with_pairs:
            cells.insert(1, fmt_paired(r.get("paired")))
        p = paper.get(r["label"], {})
        ptxt = ", ".join(f"{k} {v}" for k, v in p.items()) if p else "-"
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['wall_seconds']:.0f} |"
                     + (f" {ptxt} |" if paper else ""))
    if res.get("paper_source"):
        lines += ["", f"Paper numbers: {res['paper_source']}"]
    lines += ["", f"Command: `{res['command']}`", "", "Rows (seed 0 shown):", ""]
    for r in res["rows"]:
        lines.append(f"- {r['label']}: `{r['commands'][0]}`")
    failed = [r["label"] for r in res["rows"] if r["failed"]]
    if failed:
        lines += ["", f"Failed rows (see their run.log): {', '.join(failed)}"]
    return "\n".join(lines) + "\n"


def run_table(cfg: TablesConfig, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    errors = spec_errors(cfg.table)
    if errors:
        raise ValueError("\n".join(errors))
    t = cfg.table
    out_dir = Path(cfg.out_dir)
    runs = out_dir / "runs" / t.name
    start, t_all = machine(), time.perf_counter()
    rows_out = []
    total = len(t.rows) * len(t.seeds)
    done = reused = 0
    for row in t.rows:
        values: Dict[str, List[Optional[float]]] = {c.label: [] for c in t.columns}
        by_seed: Dict[str, Dict[int, Optional[float]]] = {c.label: {} for c in t.columns}
        commands, wall, failed = [], 0.0, False
        for seed in t.seeds:
            run_dir = runs / f"{slug(row.label)}_s{seed}"
            cmd = row_command(cfg, row, seed, run_dir)
            commands.append(shlex.join(["python", *cmd[1:]]))
            done += 1
            if cfg.dry_run:
                print(commands[-1])
                continue
            result = result_path(row_entry(t, row), run_dir)
            stamp = run_dir / "table_command.txt"
            twin = twin_of(runs.parent, commands[-1], row_entry(t, row), run_dir) if cfg.reuse else None
            if cfg.reuse and result.is_file() and stamp.is_file() and stamp.read_text() == commands[-1]:
                log.info("table %s: [%d/%d] %s seed %d: reusing %s", t.name, done, total, row.label, seed, result)
                reused += 1
            elif twin is not None:
                log.info("table %s: [%d/%d] %s seed %d: the same run as %s, reusing its result", t.name, done, total,
                         row.label, seed, twin)
                run_dir.mkdir(parents=True, exist_ok=True)
                for name in (result.name, "table_wall.json"):
                    if (twin / name).is_file():
                        shutil.copyfile(twin / name, run_dir / name)
                atomic_write_text(run_dir / "twin_of.txt", str(twin))
                atomic_write_text(stamp, commands[-1])
                reused += 1
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                stamp.unlink(missing_ok=True)
                result.unlink(missing_ok=True)
                log.info("table %s: [%d/%d] %s seed %d ...", t.name, done, total, row.label, seed)
                t0 = time.perf_counter()
                with open(run_dir / "run.log", "w") as logf:
                    proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
                secs = time.perf_counter() - t0
                if proc.returncode == 0 and result.is_file():
                    atomic_write_text(stamp, commands[-1])
                    atomic_write_json(run_dir / "table_wall.json", {"seconds": secs})
                log.info("table %s: [%d/%d] %s seed %d %s in %.0f s", t.name, done, total, row.label, seed,
                         "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, {run_dir}/run.log)",
                         secs)
            if not result.is_file():
                failed = True
                continue
            data = json.loads(result.read_text())
            wall_file = run_dir / "table_wall.json"
            wall += json.loads(wall_file.read_text())["seconds"] if wall_file.is_file() else 0.0
            for c in t.columns:
                v = dig(data, c.key)
                values[c.label].append(None if v is None else v * c.scale)
                by_seed[c.label][seed] = values[c.label][-1]
        rows_out.append({"label": row.label, "overrides": list(row.overrides), "commands": commands,
                         "values": values, "by_seed": by_seed,
                         "columns": {k: mean_spread(v) for k, v in values.items()},
                         "wall_seconds": wall, "failed": failed, "baseline": row.baseline})
    named = {r["label"]: r for r in rows_out}
    for r in rows_out:
        if r["baseline"] is not None:
            r["paired"] = paired(r, named[r["baseline"]], t.columns[0].label)
    res = {"name": t.name, "title": t.title, "note": t.note, "entry": t.entry, "seeds": list(t.seeds),
           "columns": [{"key": c.key, "label": c.label, "scale": c.scale} for c in t.columns],
           "paper": {k: dict(v) for k, v in t.paper.items()}, "paper_source": t.paper_source,
           "scale": "quick smoke setting" if cfg.quick else ("overrides " + " ".join(cfg.extra) if cfg.extra
                                                              else "embedded (SmolLM2-135M-Instruct, CPU)"),
           "command": shlex.join(["python", "-m", "rlhf.tables", *(argv or [])]),
           "date": time.strftime("%Y-%m-%d %H:%M"), "machine_start": start, "machine_end": machine(),
           "wall_seconds": time.perf_counter() - t_all, "rows": rows_out, "quick": cfg.quick, "reused": reused}
    if not cfg.dry_run:
        suffix = "_quick" if cfg.quick else ""
        atomic_write_json(out_dir / f"{t.name}{suffix}.json", res)
        atomic_write_text(out_dir / f"{t.name}{suffix}.md", markdown(res))
    return res


ConfigStore.instance().store(name="tables_schema", node=TablesConfig)


@hydra.main(version_base=None, config_path="../conf", config_name="tables")
def main(dcfg: DictConfig) -> None:
    try:
        cfg: TablesConfig = OmegaConf.to_object(dcfg)
        res = run_table(cfg, sys.argv[1:])
    except ValueError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    if not cfg.dry_run:
        print(markdown(res))
        bad = [r["label"] for r in res["rows"] if r["failed"]]
        if bad:
            print(f"error: table.rows: {len(bad)} row(s) failed: {', '.join(bad)}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
