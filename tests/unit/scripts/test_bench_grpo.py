"""scripts/bench.py section 1 (GRPO, rlhf vs TRL) on hand-made runs: every framework x rollout engine variant, each
side's best engine (a failed variant never counts), best-vs-best and same-engine ratios, the rendered markdown (a
failed variant's error shown), an older report without variants, and the BENCH_ENGINES / BENCH_SECTIONS knobs."""

import json
import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_common  # noqa: E402
from bench_online import grpo_summary, summarize_run  # noqa: E402
from bench_report import render_markdown  # noqa: E402

COMPLETIONS = 4


def run(framework, engine, step_seconds, gen_seconds=None, sync=None, repeat=0, error=None, rss=1000.0, setup=5.0):
    """A finished run as bench_online returns it: steps with t_end, completions, gen tokens and phase times."""
    steps, t = [], 0.0
    for i, sec in enumerate(step_seconds):
        t += sec
        steps.append({"step": i + 1, "step_seconds": sec, "t_end": t, "completions": COMPLETIONS,
                      "gen_tokens": 32.0, "reward_mean": 0.25 * i, "em_flexible": 0.25 * i, "finished_frac": 0.5,
                      "time/generate": gen_seconds, "time/sync": sync, "time/update": sec / 4,
                      "time/experience": None, "time/reward": 0.01})
    r = {"framework": framework, "engine": engine, "algo": "grpo", "repeat": repeat, "rc": 1 if error else 0,
         "wall_s": t + setup + 1.0, "peak_rss_mb": rss, "log": "x.log", "info": {"setup_s": setup}}
    if framework == "trl":
        r["info"]["trainer_init_s"] = setup - 4.0
    if error:
        r["error"] = error
        if framework == "trl":  # bench_trl.py wrote a result without steps
            r["steps"] = []
    else:
        r["steps"] = steps
    r["summary"] = summarize_run(r)
    return r


def four_runs():
    return [
        run("trl", "hf", [9.0, 4.0], gen_seconds=2.0, rss=1900.0),
        run("rlhf", "hf", [9.0, 5.0], gen_seconds=2.5, rss=1700.0),
        run("trl", "vllm", [], error="exit code 1; last lines of grpo_trl_vllm_0.log:\nRuntimeError: no KV cache",
            setup=480.0),
        run("rlhf", "vllm", [9.0, 2.0], gen_seconds=0.5, sync=0.2, rss=2500.0, setup=20.0),
    ]


def test_best_engine_ratios_and_failed_variant():
    g = grpo_summary(four_runs(), ["hf", "vllm"])
    v = g["variants"]
    assert list(v) == ["trl/hf", "trl/vllm", "rlhf/hf", "rlhf/vllm"]
    assert v["trl/vllm"]["status"] == "error"
    assert v["trl/vllm"]["errors"] == ["exit code 1; last lines of grpo_trl_vllm_0.log: ... RuntimeError: no KV cache"]
    assert v["trl/vllm"]["step_seconds"] is None and v["trl/vllm"]["setup_s"] == 480.0
    assert v["rlhf/vllm"]["status"] == "ok" and v["rlhf/vllm"]["step_seconds"] == 2.0
    assert v["rlhf/vllm"]["rollout_tokens_per_s"] == pytest.approx(32.0 / 0.5)
    # TRL's only measured engine is hf (vLLM failed: out); rlhf's fastest is vLLM
    assert g["best_engine"] == {"trl": "hf", "rlhf": "vllm"}
    p = g["pooled"]
    assert p["trl"]["engine"] == "hf" and p["trl"]["step_seconds"] == 4.0
    assert p["rlhf"]["engine"] == "vllm" and p["rlhf"]["completions_per_s"] == pytest.approx(COMPLETIONS / 2.0)
    best = p["ratios_rlhf_vs_trl"]
    assert best["speedup_step_seconds"] == pytest.approx(4.0 / 2.0)
    assert best["completions_per_s"] == pytest.approx((4 / 2.0) / (4 / 4.0))
    assert best["rollout_tokens_per_s"] == pytest.approx((32 / 0.5) / (32 / 2.0))
    assert best["peak_rss"] == pytest.approx(2500.0 / 1900.0)
    same = p["ratios_same_engine"]
    assert same["hf"]["speedup_step_seconds"] == pytest.approx(4.0 / 5.0)
    assert same["vllm"]["completions_per_s"] is None  # TRL/vLLM failed: no same-engine ratio
    # equal wall time pairs the best variants; phases for each rlhf engine, the best one under the old key
    assert len(g["equal_wall_time"]) == 1
    assert g["equal_wall_time"][0]["T_s"] == pytest.approx(11.0)  # rlhf/vllm 9 + 2 vs TRL/hf 9 + 4
    assert set(g["phases_grpo_by_engine"]) == {"hf", "vllm"}
    assert g["phases_grpo"] == g["phases_grpo_by_engine"]["vllm"]
    assert g["phases_grpo"]["time/sync"]["seconds"] == 0.2


def test_all_failed_side_and_partial_variant():
    runs = [run("trl", "hf", [], error="exit code 1; boom"),
            run("rlhf", "hf", [9.0, 3.0]), run("rlhf", "hf", [], error="exit code 137; killed", repeat=1)]
    g = grpo_summary(runs, ["hf"])
    assert g["best_engine"] == {"trl": None, "rlhf": "hf"}
    assert g["variants"]["rlhf/hf"]["status"] == "partial (1 of 2 runs failed)"
    assert g["pooled"]["trl"]["step_seconds"] is None
    assert g["pooled"]["ratios_rlhf_vs_trl"]["completions_per_s"] is None
    assert g["equal_wall_time"] == []


def report(runs, engines=("hf", "vllm")):
    g = grpo_summary(runs, list(engines))
    settings = {
        "model": "embedded smollm2_135m", "fine_tune": "LoRA",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}, "dtype": "float32",
        "device": "cpu", "prompts_per_step": 2, "samples_per_prompt": 2, "completions_per_step": 4,
        "minibatch_size": 2, "epochs": 1, "optimizer_steps_per_rl_step": 2, "max_new_tokens": 8, "temperature": 0.7,
        "top_p": 1.0, "top_k": 0, "lr": 1e-4, "kl": 0.0, "clip_eps": 0.2, "max_grad_norm": 1.0,
        "steps_per_run": 2, "engines": list(engines),
        "rlhf_engine_overrides": {"hf": ["hardware=cpu"],
                                  "vllm": ["hardware=cpu_vllm", "hardware.vllm_lora_sync=true"]},
        "vllm": {"rlhf_sync": "adapter-only (vLLM's LoRA; the base weights stay in the engine)", "rlhf_verify_sync": True,
                 "rlhf_enforce_eager": True, "memory_utilization": 0.3, "trl": "colocate"},
    }
    return {"date": "2026-12-01", "stamp": "2026-12-01_10-00-00", "suite": "cpu", "quick": False, "repeats": 1,
            "command": "BENCH_SECTIONS=grpo .venv/bin/python scripts/bench.py",
            "sizes": {"prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 8, "steps": 2,
                      "judge_pairs": 2, "ppo_steps": 2, "ppo_runs": 1},
            "machine": {"cpu": "x", "cores": 2, "trl": "1.16.0", "loadavg_at_start": ["1", "1", "1"]},
            "child_omp_wait_policy": "PASSIVE", "engines": list(engines), "sections": ["grpo"],
            "sections_not_run": ["ppo", "rollout", "vllm", "judge", "memory"],
            "errors": [f"grpo {x['framework']}/{x['engine']} repeat 0: {x['error']}" for x in runs if x.get("error")],
            "grpo": {"settings": settings, "runs": runs, "variants": g["variants"], "best_engine": g["best_engine"],
                     "pooled": g["pooled"], "equal_wall_time": g["equal_wall_time"]},
            "phases_grpo": g["phases_grpo"], "phases_grpo_by_engine": g["phases_grpo_by_engine"]}


def test_render_four_variants_with_a_failed_one(tmp_path):
    md = render_markdown(report(four_runs()), tmp_path / "r.json")
    assert ("| median (after warm-up) | TRL 1.16 GRPOTrainer (transformers generate) | rlhf algo=grpo (vLLM, "
            "adapter-only sync) | ratio |") in md
    assert "| seconds per RL step | 4.00 | 2.00 | 2.00x (TRL / rlhf: > 1 means rlhf is faster) |" in md
    assert "| completions / s | 1.00 | 2.00 | 2.00x (rlhf / TRL) |" in md
    # the variants table: all four, the best of each side marked, the failed one with its error
    assert "| TRL 1.16 GRPOTrainer (transformers generate) (best) | 4.00 | 1.00 | 16.0 | 8.0 | 1,900 | 5.0 | 1 / 1 | ok |" in md
    assert ("| TRL 1.16 GRPOTrainer (vLLM colocate) | n/a | n/a | n/a | n/a | n/a | 480.0 | 0 / 0 | error: exit code 1; "
            "last lines of grpo_trl_vllm_0.log: ... RuntimeError: no KV cache |") in md
    assert "| rlhf algo=grpo (transformers generate) | 5.00 |" in md
    assert "| rlhf algo=grpo (vLLM, adapter-only sync) (best) | 2.00 | 2.00 | 64.0 | 16.0 | 2,500 | 20.0 | 1 / 1 | ok |" in md
    assert "TRL's colocated vLLM engine start-up (GRPOTrainer's constructor" in md
    assert "without eager mode): 476.0 s (median over its runs), against 1.0 s for the constructor" in md
    assert "Same engine on both sides, rlhf vs TRL: transformers generate: 0.80x completions/s" in md
    assert "vLLM: n/a completions/s" in md
    assert "hardware=cpu_vllm hardware.vllm_lora_sync=true" in md and "vllm_mode='colocate'" in md
    # raw runs carry the engine; equal wall time names the pair; phases per engine; other sections not run
    assert "| 1 | trl | vllm | 0 | n/a |" in md and "| 1 | rlhf | vllm | 2 | 2.00 |" in md
    assert "(TRL/hf with rlhf/vllm)" in md
    assert "| phase | GRPO (transformers generate) s | GRPO (transformers generate) share | GRPO (vLLM) s |" in md
    assert "| weight sync to the engine | n/a | n/a % | 0.200 | 10.0 % |" in md
    assert "## 1b. Online PPO\n\nNot run in this invocation (`BENCH_SECTIONS`)." in md
    assert "## 5. Memory: actor + reference + judge\n\nNot run" in md
    assert "- actor + reference + judge memory <= 1.3x one base: not run in this invocation (`BENCH_SECTIONS`)" in md
    assert ">= 2x TRL's completions/s on this machine, each side with its best rollout engine (TRL: transformers " \
           "generate, rlhf: vLLM): **met** (2.00x)" in md
    assert "```\ngrpo trl/vllm repeat 0: exit code 1;" in md  # the full error, in the errors list at the end


def test_render_older_report_without_variants(tmp_path):
    runs = [run("trl", "hf", [9.0, 4.0], gen_seconds=2.0), run("rlhf", "hf", [9.0, 5.0], gen_seconds=2.5)]
    r = report(runs, engines=("hf",))
    for x in runs:  # older JSON: no engine fields, no variants, no engines in the settings
        x.pop("engine")
    for k in ("variants", "best_engine"):
        r["grpo"].pop(k)
    r["grpo"]["pooled"].pop("ratios_same_engine")
    for k in ("engines", "rlhf_engine_overrides", "vllm"):
        r["grpo"]["settings"].pop(k)
    for k in ("engines", "sections", "sections_not_run", "phases_grpo_by_engine"):
        r.pop(k)
    md = render_markdown(r, tmp_path / "r.json")
    assert "| median (after warm-up) | TRL 1.16 GRPOTrainer | rlhf algo=grpo | ratio |" in md
    assert "transformers generate (no vLLM)" in md and "runs alternate TRL, rlhf, TRL, rlhf..." in md
    assert "Every framework x engine variant" not in md
    assert "| 1 | trl | hf | 2 | 4.00 |" in md
    assert "| phase | GRPO s | GRPO share |" in md
    assert "(GPU goals): not measured on a GPU (this CPU run: 0.80x completions/s)" in md


def test_engines_and_sections_knobs():
    assert bench_common.grpo_engines({"BENCH_ENGINES": "vllm, hf"}) == ["hf", "vllm"]
    assert bench_common.grpo_engines({"BENCH_ENGINES": "vllm"}) == ["vllm"]
    default = ["hf", "vllm"] if bench_common.VLLM_IN_BENCH_PY else ["hf"]
    assert bench_common.grpo_engines({}) == default
    with pytest.raises(SystemExit, match="sglang"):
        bench_common.grpo_engines({"BENCH_ENGINES": "hf,sglang"})
    assert bench_common.bench_sections({}) == list(bench_common.SECTIONS)
    assert bench_common.bench_sections({"BENCH_SECTIONS": "grpo"}) == ["grpo"]
    with pytest.raises(SystemExit, match="BENCH_SECTIONS"):
        bench_common.bench_sections({"BENCH_SECTIONS": "phases"})


def test_vllm_engine_overrides_compose(tmp_path):
    s = dict(bench_common.SUITES["cpu"], **bench_common.QUICK_SIZES)
    hf = bench_common.rlhf_overrides(s, "grpo", 2, tmp_path, "hf")
    vl = bench_common.rlhf_overrides(s, "grpo", 2, tmp_path, "vllm")
    assert "hardware=cpu" in hf and "hardware=cpu" not in vl
    assert [o for o in hf if o != "hardware=cpu"] == [o for o in vl if not o.startswith("hardware")]
    hw = bench_common.compose(vl).hardware
    assert hw.rollout == "vllm" and not hw.vllm_lora_sync and hw.device == "cpu"  # merged sync on the CPU
    lv = bench_common.rlhf_overrides(dict(s, vllm_lora_sync=True), "grpo", 2, tmp_path, "vllm")
    assert "hardware.vllm_lora_sync=true" in lv and bench_common.compose(lv).hardware.vllm_lora_sync
    assert bench_common.compose(hf).hardware.rollout == "hf"
    # the gpu suite fine-tunes fully: its vLLM variant syncs every weight (adapter-only sync needs a LoRA actor)
    g = dict(bench_common.SUITES["gpu"], **bench_common.QUICK_SIZES)
    gv = bench_common.rlhf_overrides(g, "grpo", 2, tmp_path, "vllm")
    assert "hardware=gpu_vllm" in gv and not any("vllm_lora_sync" in o for o in gv)
    cfg = bench_common.compose(gv)
    assert cfg.hardware.rollout == "vllm" and not cfg.hardware.vllm_lora_sync and not cfg.model.lora.enabled


def test_rerender_keeps_the_sections_other_bench_scripts_appended():
    from bench_report import APPENDED_MARKER, with_appended_sections

    old = "# Benchmarks\nold numbers\n\n" + APPENDED_MARKER + "\n## Weight sync\nkept 1.2 s\n"
    new = with_appended_sections("# Benchmarks\nnew numbers\n", old)
    assert "new numbers" in new and "old numbers" not in new
    assert new.endswith(APPENDED_MARKER + "\n## Weight sync\nkept 1.2 s\n")
    assert with_appended_sections("# B\n", "") == "# B\n\n" + APPENDED_MARKER + "\n"


def test_sections_left_out_can_be_kept_from_an_earlier_report(tmp_path):
    import bench
    from bench_report import mark_kept_sections

    old = {"date": "2026-11-22", "ppo": {"x": 1}, "phases_ppo": {"y": 2}, "judge": {"z": 3}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    report = {}
    kept = bench.keep_sections(report, ["grpo", "judge"], str(path))
    assert kept == ["ppo"]  # judge was re-run; rollout, vllm and memory are not in the old report
    assert report["ppo"] == {"x": 1} and report["phases_ppo"] == {"y": 2} and "judge" not in report
    assert report["kept_sections"]["date"] == "2026-11-22"
    md = mark_kept_sections("## 1b. Online PPO\n\ntext\n", report["kept_sections"])
    assert md.splitlines()[2].startswith("_ppo: figures from the run of 2026-11-22")
    assert bench.keep_sections({}, ["grpo"], None) == []
