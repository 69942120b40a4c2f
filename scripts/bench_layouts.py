"""Throughput of each training layout on this machine: one process (transformers generate or vLLM) against two torchrun
ranks under DeepSpeed ZeRO-2/3 (transformers generate or one vLLM engine per rank). Each layout runs the same GRPO
steps on the embedded SmolLM2-135M-Instruct (LoRA r16, fp32); the figures are medians over the steps after the first
(warm-up), summed over ranks where they are rates. Prints a markdown table and writes JSON.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv/bin/python scripts/bench_layouts.py [out.json]

Knobs (environment variables): RLHF_BENCH_LAYOUT_STEPS (4), RLHF_BENCH_LAYOUTS (comma list of hardware presets
below, e.g. cpu,zero3_vllm).
On a 2-core machine two ranks get one core each: the comparison says what the layouts cost here, not how they scale.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.backend.distributed import free_port  # noqa: E402

STEPS = int(os.environ.get("RLHF_BENCH_LAYOUT_STEPS", "4"))
# name -> (processes, hardware preset)
LAYOUTS: Dict[str, tuple] = {
    "1 process, transformers generate": (1, "cpu"),
    "1 process, vLLM": (1, "cpu_vllm"),
    "2 ranks ZeRO-2, transformers generate": (2, "zero2"),
    "2 ranks ZeRO-2, vLLM per rank": (2, "zero2_vllm"),
    "2 ranks ZeRO-3, vLLM per rank": (2, "zero3_vllm"),
}
COMMON = ["model=smollm2_135m", "model.lora.enabled=true", "algo=grpo", f"steps={STEPS}", "algo.prompts_per_step=4",
          "algo.samples_per_prompt=4", "algo.minibatch_size=8", "generation.max_new_tokens=64", "eval_before=false",
          "eval_after=false", "save_every=0", "logging.wandb=disabled", "logging.progress=false", "logging.plots=false"]


def run_layout(name: str, procs: int, hardware: str, run_dir: Path) -> Dict[str, Any]:
    overrides = [f"hydra.run.dir={run_dir}", *COMMON, f"hardware={hardware}"]
    if procs == 1:
        cmd = [sys.executable, "-m", "rlhf.train", *overrides]
    else:  # one intra-op thread per rank: the ranks split the cores
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
               f"--master_port={free_port()}", "-m", "rlhf.train", *overrides, "hardware.num_threads=1"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    if procs > 1:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"layout": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "reward_mean" in r][1:]  # the first step warms up
    med = lambda k: statistics.median(r[k] for r in steps) if steps and k in steps[0] else None  # noqa: E731
    return {"layout": name, "processes": procs, "hardware": hardware, "steps_timed": len(steps),
            "gen_tokens_per_s": med("gen_tokens_per_s"), "tokens_per_s": med("tokens_per_s"),
            "step_seconds": med("step_seconds"), "generate_s": med("time/generate"), "update_s": med("time/update"),
            "sync_s": med("time/sync"), "wall_s": wall}


def markdown(res: Dict[str, Any]) -> str:
    f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"Command: `{res['command']}`; {res['machine']}, load average before {res['load_before']}, "
             f"after {res['load_after']}; {res['date']}.", "",
             "| layout | gen tokens/s | s / step | generate s | update s | sync s | wall s (start-up included) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['layout']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['layout']} | {f(r['gen_tokens_per_s'])} | {f(r['step_seconds'], 2)} | "
                     f"{f(r['generate_s'], 2)} | {f(r['update_s'], 2)} | {f(r['sync_s'], 2)} | {f(r['wall_s'], 0)} |")
    return "\n".join(lines)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    presets = [s for s in os.environ.get("RLHF_BENCH_LAYOUTS", "").split(",") if s]
    wanted = [n for n, (_, hw) in LAYOUTS.items() if not presets or hw in presets]
    res: Dict[str, Any] = {"command": " ".join(["python", "scripts/bench_layouts.py", *sys.argv[1:]]),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": STEPS,
                           "date": time.strftime("%Y-%m-%d %H:%M"),
                           "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(wanted):
            procs, hw = LAYOUTS[name]
            print(f"[{i + 1}/{len(wanted)}] {name} ...", file=sys.stderr, flush=True)
            rows.append(run_layout(name, procs, hw, Path(tmp) / f"run{i}"))
            print(f"    {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    res["rows"] = rows
    res["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if out is not None:
        out.write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
