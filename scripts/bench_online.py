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


def run_rlhf(s: Dict[str, Any], algo: str, steps: int, run_dir: Path, engine: str = "hf") -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "rlhf.train", *rlhf_overrides(s, algo, steps, run_dir, engine)]
    res = run_child(cmd, run_dir.parent / f"{run_dir.name}.log")
    res.update(framework="rlhf", algo=algo, engine=engine, command=" ".join(shlex.quote(c) for c in cmd[1:]))
    try:  # set-up wall time (model, data, rollout engine start-up) from the run's summary.json
        wall = json.loads((run_dir / "summary.json").read_text()).get("wall_seconds") or {}
        res["info"] = {"setup_s": next((v for k, v in wall.items() if k.startswith("setup")), None)}
    except (OSError, ValueError):
        pass
    if res["rc"] == 0:
        res["steps"] = rlhf_steps(run_dir)
        completions = s["prompts_per_step"] * s["samples_per_prompt"]
        for st in res["steps"]:
            st["completions"] = completions
    return res


def run_trl(spec: Dict[str, Any], run_dir: Path, engine: str = "hf") -> Dict[str, Any]:
    """TRL's GRPOTrainer in its own process; engine vllm: `use_vllm=True, vllm_mode='colocate'` (bench_trl.py)."""
    if engine not in ("hf", "vllm"):
        raise ValueError(f"unknown rollout engine {engine!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = dict(spec, out_dir=str(run_dir / "trl_output"), use_vllm=engine == "vllm")
    spec_path, out_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_trl.py"), str(spec_path), str(out_path)]
    res = run_child(cmd, run_dir.parent / f"{run_dir.name}.log")
    res.update(framework="trl", algo="grpo", engine=engine, command=" ".join(shlex.quote(c) for c in cmd[1:]))
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
        "outside_steps_s": outside_steps(run),
        "reward_mean_all_steps": statistics.fmean([x["reward_mean"] for x in steps]) if steps else None,
    }


def outside_steps(run: Dict[str, Any]) -> Optional[float]:
    """Process wall time outside the RL steps: imports, model load, engine start-up (vLLM), teardown."""
    steps = run.get("steps") or []
    if run.get("wall_s") is None or not steps or steps[-1].get("t_end") is None:
        return None
    return run["wall_s"] - steps[-1]["t_end"]


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
        "outside_steps_s": median([outside_steps(r) for r in ok]),
    }


# ------------------------------------------------------------------------------------ section 1: engines and variants
def run_ratios(pt: Dict[str, Any], pr: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """rlhf vs TRL from two pooled summaries (speedup_step_seconds: TRL / rlhf; peak_rss: rlhf / TRL; else rlhf / TRL)."""
    return {
        "speedup_step_seconds": ratio(pt.get("step_seconds"), pr.get("step_seconds")),
        "completions_per_s": ratio(pr.get("completions_per_s"), pt.get("completions_per_s")),
        "gen_tokens_per_s_end_to_end": ratio(pr.get("gen_tokens_per_s_end_to_end"),
                                             pt.get("gen_tokens_per_s_end_to_end")),
        "rollout_tokens_per_s": ratio(pr.get("rollout_tokens_per_s"), pt.get("rollout_tokens_per_s")),
        "peak_rss": ratio(pr.get("peak_rss_mb"), pt.get("peak_rss_mb")),
    }


def error_line(err: str) -> str:
    """One line for a table: an error's first line and, for a log tail (run_child), its last non-empty line."""
    lines = [x.strip() for x in err.splitlines() if x.strip()]
    if not lines:
        return "error"
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def variant(runs: List[Dict[str, Any]], framework: str, engine: str) -> Dict[str, Any]:
    """One framework x engine: pooled medians of its runs, plus status (ok | partial | error | not run) and errors."""
    mine = [r for r in runs if r["framework"] == framework and r.get("engine", "hf") == engine]
    v = pool(mine)
    failed = [r for r in mine if r.get("error") or not r.get("steps")]
    errors = [error_line(r.get("error") or "no steps recorded") for r in failed]
    if not mine:
        status = "not run"
    elif not failed and v["step_seconds"] is not None:
        status = "ok"
    elif v["step_seconds"] is not None:
        status = f"partial ({len(failed)} of {len(mine)} runs failed)"
    else:
        status = "error"
        if not errors:
            errors = ["no measured step"]
    v.update(framework=framework, engine=engine, status=status, errors=errors,
             setup_s=median([(r.get("info") or {}).get("setup_s") for r in mine]),
             # TRL: GRPOTrainer's constructor, which starts the colocated vLLM engine (bench_trl.py)
             trainer_init_s=median([(r.get("info") or {}).get("trainer_init_s") for r in mine]))
    return v


def best_engine(variants: Dict[str, Dict[str, Any]], framework: str) -> Optional[str]:
    """The framework's engine with the lowest median s/step among its variants that measured steps (failed: out)."""
    ok = [(v["step_seconds"], v["engine"]) for v in variants.values()
          if v["framework"] == framework and v.get("step_seconds") is not None]
    return min(ok)[1] if ok else None


def grpo_summary(runs: List[Dict[str, Any]], engines: List[str]) -> Dict[str, Any]:
    """Section 1's pooled figures: every framework x engine variant, each side's best engine, best-vs-best and
    same-engine ratios, equal-wall-time pairs of the best variants, and rlhf's phase breakdown per engine."""
    variants = {f"{fw}/{e}": variant(runs, fw, e) for fw in ("trl", "rlhf") for e in engines}
    best = {fw: best_engine(variants, fw) for fw in ("trl", "rlhf")}
    empty = dict(pool([]), framework=None, engine=None, status="no engine measured a step", errors=[])
    pooled = {fw: dict(variants[f"{fw}/{best[fw]}"]) if best[fw] else dict(empty, framework=fw) for fw in best}
    pooled["ratios_rlhf_vs_trl"] = run_ratios(pooled["trl"], pooled["rlhf"])
    pooled["ratios_same_engine"] = {e: run_ratios(variants[f"trl/{e}"], variants[f"rlhf/{e}"]) for e in engines}

    def of(fw, e):
        return sorted((r for r in runs if r["framework"] == fw and r.get("engine", "hf") == e),
                      key=lambda r: r.get("repeat", 0))

    pairs = ([equal_time(a, b) for a, b in zip(of("trl", best["trl"]), of("rlhf", best["rlhf"]))]
             if best["trl"] and best["rlhf"] else [])
    by_engine = {e: phase_breakdown(of("rlhf", e)) for e in engines}
    phases = by_engine.get(best["rlhf"]) or by_engine.get("hf") or phase_breakdown([])
    return {"variants": variants, "best_engine": best, "pooled": pooled, "equal_wall_time": pairs,
            "phases_grpo": phases, "phases_grpo_by_engine": by_engine}


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
