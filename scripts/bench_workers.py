"""Isolated measurements for scripts/bench.py, each run in its own process via `bench.py _worker NAME SPEC OUT`."""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

from bench_common import ROOT, SEED, compose, median, ratio, run_child


# ---------------------------------------------------------------------------------------------------------- workers
def _rss() -> Dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024.0
    return out


def worker_rollout(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Raw transformers generate on the policy (LoRA merged as HFEngine does) at the training step's batch/lengths."""
    import torch

    from rlhf.model.load import load_causal_lm
    from rlhf.model.policy import build_policy
    from rlhf.rollout.base import SamplingParams
    from rlhf.rollout.hf_engine import HFEngine, merged_adapter

    cfg = compose(spec["overrides"])
    torch.manual_seed(SEED)
    device = torch.device(cfg.hardware.device if cfg.hardware.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tok = load_causal_lm(cfg.model, cfg.hardware.dtype, seed=cfg.seed)
    policy = build_policy(model, cfg.model, value_head=False).to(device)
    engine = HFEngine(policy.generation_model(), tok, device, cfg.dataset.max_prompt_tokens)
    prompts = spec["prompts"]
    g, n = cfg.generation, cfg.algo.samples_per_prompt
    sampling = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                              top_k=g.top_k, n=n)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc.input_ids.repeat_interleave(n, 0).to(device)
    att = enc.attention_mask.repeat_interleave(n, 0).to(device)
    B, M = ids.shape[0], g.max_new_tokens
    kwargs = dict(max_new_tokens=M, min_new_tokens=M, do_sample=True, temperature=g.temperature, top_p=g.top_p,
                  top_k=g.top_k or None, pad_token_id=tok.pad_token_id, eos_token_id=sorted(engine.eos_ids))
    m = engine.model
    m.eval()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad(), merged_adapter(m):
        m.generate(input_ids=ids, attention_mask=att, **dict(kwargs, max_new_tokens=2, min_new_tokens=2))  # warm-up
        fixed = []
        for _ in range(spec["repeats"]):
            sync()
            t = time.perf_counter()
            out = m.generate(input_ids=ids, attention_mask=att, **kwargs)
            sync()
            fixed.append(time.perf_counter() - t)
            assert out.shape[1] - ids.shape[1] == M, "min_new_tokens did not force fixed-length generation"
    natural = []
    for _ in range(spec["repeats"]):
        sync()
        t = time.perf_counter()
        r = engine.generate(prompts, sampling)
        sync()
        natural.append((time.perf_counter() - t, float(r.response_mask.sum()), r.response_ids.shape[1]))
    best_fixed = min(fixed)
    nat = min(natural)
    return {
        "batch": B, "prompts": len(prompts), "samples_per_prompt": n, "max_new_tokens": M, "prompt_width": ids.shape[1],
        "dtype": cfg.hardware.dtype, "device": str(device), "threads": torch.get_num_threads(),
        "fixed_length": {"seconds": fixed, "best_seconds": best_fixed, "tokens_per_s": B * M / best_fixed},
        "hfengine_generate": {"seconds": [x[0] for x in natural], "best_seconds": nat[0],
                              "valid_tokens": nat[1], "width": nat[2], "valid_tokens_per_s": nat[1] / nat[0],
                              "slot_tokens_per_s": B * nat[2] / nat[0]},
    }


def worker_memory(spec: Dict[str, Any]) -> Dict[str, Any]:
    """RSS increase after building one configuration in a fresh process (weights only: no optimizer, no activations).

    The rlhf configurations are built by the pipeline's own builders, as `rlhf.train reward=lora_judge` does:
      rlhf_shared    LoRA actor; reference = adapters off; lora_judge = a second adapter (judge.share_base default)
      rlhf_separate  the same with judge.share_base=false: the judge loads its own base
      three_copies   full fine-tuning: actor + frozen reference copy + a separate judge (no adapters anywhere)
    """
    import gc

    import torch

    from rlhf.config import JudgeConfig, LoraConfig, ModelConfig
    from rlhf.judge.lora_judge import build_lora_judge
    from rlhf.model.load import load_causal_lm
    from rlhf.model.policy import build_policy

    gc.collect()
    before = _rss()
    t0 = time.perf_counter()
    config, dtype = spec["config"], spec["dtype"]
    a, j = spec["actor_lora"], spec["judge_lora"]
    actor_lora = LoraConfig(enabled=config != "three_copies", r=a["r"], alpha=a["alpha"], dropout=a["dropout"],
                            target_modules=list(a["target_modules"]))
    model_cfg = ModelConfig(source="embedded", lora=actor_lora)
    judge_cfg = JudgeConfig(lora=LoraConfig(enabled=True, r=j["r"], alpha=j["alpha"], dropout=j["dropout"],
                                            target_modules=list(j["target_modules"])), num_demos=0)
    models, policy, judge = [], None, None
    if config == "one_base":
        models = [load_causal_lm(model_cfg, dtype)[0]]
    elif config in ("rlhf_shared", "rlhf_separate"):
        base, tok = load_causal_lm(model_cfg, dtype)
        policy = build_policy(base, model_cfg, value_head=False)
        share = policy.model if config == "rlhf_shared" else None
        judge = build_lora_judge(model_cfg, judge_cfg, "cpu", dtype, share_with=share, tokenizer=tok)
        models = [policy.model] + ([] if share is not None else [judge.model])
    elif config == "three_copies":
        base, tok = load_causal_lm(model_cfg, dtype)
        policy = build_policy(base, model_cfg, value_head=False)  # actor + frozen reference copy
        judge = build_lora_judge(replace_lora(model_cfg, False), judge_cfg, "cpu", dtype)
        models = [policy.model, policy.ref_model, judge.model]
    else:
        raise ValueError(config)
    gc.collect()
    lazy = _rss()  # safetensors weights may still be lazily mapped from the file here
    seen, nbytes = set(), 0
    with torch.no_grad():
        for mdl in models:
            for p in list(mdl.parameters()) + list(mdl.buffers()):
                key = p.data_ptr()
                if key not in seen:  # read every weight once, so every configuration is fully resident
                    seen.add(key)
                    nbytes += p.numel() * p.element_size()
                    float(p.float().abs().sum())
    gc.collect()
    after = _rss()
    check = None
    if policy is not None:  # every role answers, from the configuration as built
        x = torch.tensor([[1, 2, 3]])
        with torch.no_grad():
            la = policy.model(input_ids=x).logits
            lr = policy.ref_logprobs(torch.cat([x, x], 1), torch.ones(1, 6, dtype=torch.long), 3)
            lj = judge.verdict_logits([[4, 5, 6]], use_cache=False)
        check = {"actor_logits_finite": bool(torch.isfinite(la).all()),
                 "reference_logprobs_finite": bool(torch.isfinite(lr).all()),
                 "judge_logits_finite": bool(torch.isfinite(lj).all()),
                 "judge_on_actor_base": type(judge.model).__name__ == "AdapterView"}
    return {"config": config, "dtype": dtype, "load_s": time.perf_counter() - t0,
            "rss_before_mb": before, "rss_after_load_lazy_mb": lazy, "rss_after_mb": after,
            "rss_increase_mb": after["VmRSS"] - before["VmRSS"], "param_bytes_mb": nbytes / 2 ** 20, "check": check}


def replace_lora(model_cfg: Any, enabled: bool) -> Any:
    from dataclasses import replace

    return replace(model_cfg, lora=replace(model_cfg.lora, enabled=enabled))


def worker_judge(spec: Dict[str, Any]) -> Dict[str, Any]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_judge import bench_judge

    from rlhf.config import ModelConfig

    kw = dict(num_demos=spec["num_demos"], pairs=spec["pairs"], batch_size=spec["batch_size"], dtype=spec["dtype"],
              repeats=spec["repeats"])
    accepted = inspect.signature(bench_judge).parameters
    return bench_judge(ModelConfig(source="embedded"), **{k: v for k, v in kw.items() if k in accepted})


def worker_trl_ppo(spec: Dict[str, Any]) -> Dict[str, Any]:
    import importlib

    import trl

    out: Dict[str, Any] = {"trl_version": trl.__version__, "attempts": {}}
    for name in ("trl.experimental.ppo", "trl.trainer.ppo_trainer"):
        try:
            importlib.import_module(name)
            out["attempts"][name] = "ok"
        except Exception as e:
            out["attempts"][name] = f"{type(e).__name__}: {e}"
    try:
        from trl import PPOTrainer  # noqa: F401

        out["attempts"]["from trl import PPOTrainer"] = "ok"
    except Exception as e:
        out["attempts"]["from trl import PPOTrainer"] = f"{type(e).__name__}: {e}"
    out["available"] = any(v == "ok" for v in out["attempts"].values())
    return out


WORKERS = {"rollout": worker_rollout, "memory": worker_memory, "judge": worker_judge, "trl_ppo": worker_trl_ppo}

VLLM_SNIPPET = r"""
import inspect, json, sys
sys.path.insert(0, sys.argv[3])
from bench_rollout import bench_rollout
kw = json.loads(open(sys.argv[1]).read())
params = inspect.signature(bench_rollout).parameters
takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
res = bench_rollout(**{k: v for k, v in kw.items() if takes_any or k in params})
open(sys.argv[2], "w").write(json.dumps(res, default=str))
"""


def vllm_derived(v: Dict[str, Any]) -> Dict[str, Any]:
    """vLLM/HF throughput ratio and weight-sync seconds per 1B parameters from bench_rollout's JSON, where present."""
    hf, vl = v.get("hf") or {}, v.get("vllm") or {}
    sync = vl.get("sync_seconds") or []
    med = median(list(sync)) if isinstance(sync, list) else sync
    params = vl.get("sync_params")
    return {"hf_tokens_per_s": hf.get("tokens_per_s"), "vllm_tokens_per_s": vl.get("tokens_per_s"),
            "vllm_over_hf": ratio(vl.get("tokens_per_s"), hf.get("tokens_per_s")), "sync_seconds_median": med,
            "sync_seconds_per_1b_params": ratio(med, params / 1e9) if med is not None and params else None}


def run_worker(name: str, spec: Dict[str, Any], work: Path) -> Dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = work / f"{name}.spec.json", work / f"{name}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    # through bench.py's `_worker` entry point, as `python scripts/bench.py _worker NAME SPEC.json OUT.json`
    bench_py = str(ROOT / "scripts" / "bench.py")
    res = run_child([sys.executable, bench_py, "_worker", name, str(spec_path), str(out_path)], work / f"{name}.log")
    if out_path.is_file() and res["rc"] == 0:
        res["result"] = json.loads(out_path.read_text())
    return res
