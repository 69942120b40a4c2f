"""Online RL runs for scripts/bench.py: launch rlhf / TRL in their own processes and summarise their steps."""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench_common import PHASES, ROOT, median, ratio, rlhf_overrides, run_child


# ------------------------------------------------------------------------------------------------- online: run + parse
def rlhf_steps(run_dir: Path) -> List[Dict[str, Any]]:
    from rlhf.report.logger import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "step_seconds" in r]
    t = 0.0
    out = []
    for r in rows:
        t += r["step_seconds"]
        out.append({"step": r["step"], "step_seconds": r["step_seconds"], "t_end": t,
                    "completions": None, "gen_tokens": r["tokens_per_s"] * r["step_seconds"],
                    "reward_mean": r["reward_mean"], "em_flexible": r.get("em_flexible"),
                    "response_length": r.get("response_length"), "finished_frac": r.get("finished_frac"),
                    "gen_tokens_per_s": r.get("gen_tokens_per_s"), "optimizer_steps": r.get("optimizer_steps"),
                    **{k: r.get(k) for k in ("time/generate", "time/reward", "time/experience", "time/update",
                                              "time/sync")}})
    return out


def run_rlhf(s: Dict[str, Any], algo: str, steps: int, run_dir: Path) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "rlhf.train", *rlhf_overrides(s, algo, steps, run_dir)]
    res = run_child(cmd, run_dir.parent / f"{run_dir.name}.log")
    res.update(framework="rlhf", algo=algo, command=" ".join(shlex.quote(c) for c in cmd[1:]))
    if res["rc"] == 0:
        res["steps"] = rlhf_steps(run_dir)
        completions = s["prompts_per_step"] * s["samples_per_prompt"]
        for st in res["steps"]:
            st["completions"] = completions
    return res


def run_trl(spec: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = dict(spec, out_dir=str(run_dir / "trl_output"))
    spec_path, out_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_trl.py"), str(spec_path), str(out_path)]
    res = run_child(cmd, run_dir.parent / f"{run_dir.name}.log")
    res.update(framework="trl", algo="grpo", command=" ".join(shlex.quote(c) for c in cmd[1:]))
    if out_path.is_file():
        out = json.loads(out_path.read_text())
        res["steps"] = out.pop("steps")
        out.pop("log_history", None)  # kept in result.json
        res["info"] = out
        if out.get("error"):
            res["error"] = out["error"]
    return res


def summarize_run(run: Dict[str, Any]) -> Dict[str, Any]:
    """Medians over the steps after the first (warm-up)."""
    steps = run.get("steps") or []
    m = steps[1:]
    sec = median([x["step_seconds"] for x in m])
    return {
        "steps": len(steps), "measured_steps": len(m), "step_seconds": sec,
        "completions_per_s": median([x["completions"] / x["step_seconds"] for x in m if x.get("completions")]),
        "gen_tokens_per_s_end_to_end": median([x["gen_tokens"] / x["step_seconds"] for x in m
                                               if x.get("gen_tokens") is not None]),
        "gen_tokens_per_step": median([x.get("gen_tokens") for x in m]),
        "generate_seconds": median([x.get("time/generate") for x in m]),
        "rollout_tokens_per_s": median([x["gen_tokens"] / x["time/generate"] for x in m
                                        if x.get("time/generate") and x.get("gen_tokens") is not None]),
        "peak_rss_mb": run.get("peak_rss_mb"), "wall_s": run.get("wall_s"),
        "reward_mean_all_steps": statistics.fmean([x["reward_mean"] for x in steps]) if steps else None,
    }


def pool(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over all measured steps of several runs of one framework (runs with an error are left out)."""
    ok = [r for r in runs if r.get("steps") and not r.get("error")]
    m = [x for r in ok for x in r["steps"][1:]]
    return {
        "runs": len(ok), "measured_steps": len(m),
        "step_seconds": median([x["step_seconds"] for x in m]),
        "completions_per_s": median([x["completions"] / x["step_seconds"] for x in m if x.get("completions")]),
        "gen_tokens_per_s_end_to_end": median([x["gen_tokens"] / x["step_seconds"] for x in m
                                               if x.get("gen_tokens") is not None]),
        "rollout_tokens_per_s": median([x["gen_tokens"] / x["time/generate"] for x in m
                                        if x.get("time/generate") and x.get("gen_tokens") is not None]),
        "peak_rss_mb": median([r.get("peak_rss_mb") for r in ok]),
    }


def equal_time(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Reward/EM each side reached by the same wall time T = the shorter run's training time (all steps)."""
    sa, sb = a.get("steps") or [], b.get("steps") or []
    if not sa or not sb:
        return None
    T = min(sa[-1]["t_end"], sb[-1]["t_end"])

    def upto(steps):
        done = [x for x in steps if x["t_end"] <= T + 1e-9]
        return {"steps_done": len(done),
                "reward_mean": statistics.fmean([x["reward_mean"] for x in done]) if done else None,
                "em_flexible": statistics.fmean([x["em_flexible"] for x in done if x.get("em_flexible") is not None])
                if done else None,
                "last_step_reward": done[-1]["reward_mean"] if done else None}

    return {"T_s": T, a["framework"]: upto(sa), b["framework"]: upto(sb)}


def phase_breakdown(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    m = [x for r in runs if r.get("steps") and not r.get("error") for x in r["steps"][1:]]
    total = median([x["step_seconds"] for x in m])
    out = {"measured_steps": len(m), "step_seconds": total}
    for k in PHASES:
        v = median([x.get(k) for x in m])
        out[k] = {"seconds": v, "share": ratio(v, total)}
    return out
