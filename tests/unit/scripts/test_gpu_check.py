"""scripts/gpu_check.py (issue 16's one-call GPU check) without a GPU: every training step's overrides compose into a
valid config on the GPU presets, and BENCHMARKS.md's GPU section renders a hand-made result (ratio, held-out
numbers, sync per 1B, a failed and a skipped step) and replaces itself on a re-run without touching other sections."""

import sys

import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench_report  # noqa: E402
import gpu_check  # noqa: E402
from bench_common import compose  # noqa: E402


@pytest.mark.parametrize("name", ["curve", "ppo", "zero2", "zero3_vllm", "lora_judge"])
def test_every_training_step_composes_on_the_gpu_presets(name):
    assert not gpu_check.REHEARSE
    cfg = compose(gpu_check.train_overrides(name))
    assert cfg.hardware.device == "cuda" and cfg.hardware.dtype == "bfloat16"
    if name == "curve":  # TRL's anchor shape: 8 prompts x 8 samples x 128 tokens, full fine-tune, lr 1e-5
        assert (cfg.algo.prompts_per_step, cfg.algo.samples_per_prompt, cfg.generation.max_new_tokens) == (8, 8, 128)
        assert not cfg.model.lora.enabled and cfg.algo.lr == 1e-5 and cfg.steps >= 100
        assert cfg.hardware.vllm_verify_sync and cfg.hardware.vllm_enable_sleep and cfg.eval_before
    if name in ("ppo", "zero3_vllm", "lora_judge"):  # beside the curve: a fixed KV cache, no memory profile
        assert cfg.hardware.vllm_kv_cache_gb > 0
    if name == "lora_judge":
        assert cfg.judge.vllm and cfg.hardware.vllm_lora_sync


def bench_runs():
    def run(framework, secs, gen):
        return {"framework": framework, "engine": "vllm", "steps": [
            {"step": i + 1, "step_seconds": x, "time/generate": gen, "time/update": 0.2, "time/sync": 0.05}
            for i, x in enumerate(secs)]}
    return [run("trl", [3.0, 1.0, 1.2, 1.1], 0.6), run("rlhf", [2.0, 0.5, 0.4, 0.6], 0.3)]


def report():
    return {
        "machine": {"date": "2026-11-29T23:00:00+00:00", "gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "cores": 16,
                    "torch": "2.11.0+cu130", "cuda": "13.0", "vllm": "0.24.0", "trl": "1.16.0"},
        "budget_s": 480, "elapsed_s": 470,
        "steps": {
            "bench": {"rc": 0, "wall_s": 150, "report": {"grpo": {
                "settings": {"model": "smollm2_135m_full", "fine_tune": "full", "dtype": "bfloat16",
                             "prompts_per_step": 8, "samples_per_prompt": 8, "max_new_tokens": 128, "lr": 1e-5,
                             "steps_per_run": 4},
                "variants": {"trl/vllm": {"runs": 1, "step_seconds": 1.1, "completions_per_s": 58.0,
                                          "status": "ok"},
                             "rlhf/vllm": {"runs": 1, "step_seconds": 0.5, "completions_per_s": 128.0,
                                           "status": "ok"}},
                "runs": bench_runs()}}},
            "curve": {"rc": 0, "wall_s": 200, "metrics": [{"step": 1}], "summary": {
                "eval_before": {"n": 200, "em_strict": 0.10, "em_flexible": 0.20},
                "eval_after": {"n": 200, "em_strict": 0.25, "em_flexible": 0.30}},
                "curve": {"reward_mean": [0.0] * 10 + [0.5] * 10, "step_seconds": [1.0, 0.8, 0.9],
                          "engine_logprob_diff_mean": [0.01, 0.02], "engine_logprob_diff_max": [0.3, 0.5]}},
            "sync": {"rc": 0, "wall_s": 90, "report": {"runs": [
                {"shape": "1.5b", "params": 1_543_714_304, "plain": {"median_s": 0.617, "s_per_1b_params": 0.4},
                 "verified": {"median_s": 0.9}}]}},
            "ppo": {"rc": 1, "wall_s": 30, "metrics": [], "tail": ["RuntimeError: boom"]},
            "lora_judge": {"skipped": "20 s left of GPU_CHECK_BUDGET_S=480, needs at least 80 s"},
        }}


def test_gpu_section_renders_ratio_curve_sync_and_failures():
    md = bench_report.gpu_check_markdown(report())
    assert md.startswith(bench_report.GPU_SECTION_TITLE)
    assert "**2.21x**" in md  # 128 / 58 completions/s
    assert "| TRL | 1 | 1.100 | 58.0 |" in md and "| 0.600 | 0.200 | 0.050 |" in md  # phases: first step dropped
    assert "strict 10.0 % -> 25.0 %, flexible 20.0 % -> 30.0 %" in md and "0.000 -> 0.500" in md
    assert "| 1.5b | 1.544 B | 0.617 | 0.400 |" in md
    assert "| ppo | FAILED (rc 1) |" in md and "`RuntimeError: boom`" in md
    assert "| lora_judge | skipped: 20 s left" in md


def test_gpu_section_replaces_itself_and_keeps_the_rest():
    base = "# Benchmarks\n\n## 1. x\n\nold\n\n" + bench_report.APPENDED_MARKER + "\n## Kept\n\nkept text\n"
    first = bench_report.with_gpu_section(base, "## GPU check (issue 16): CUDA path and rlhf vs TRL on the lent GPU\n\nv1\n")
    assert first.startswith(base.rstrip("\n")) and first.rstrip().endswith("v1")
    again = bench_report.with_gpu_section(first + "\n## After\n\nafter text\n",
                                          bench_report.GPU_SECTION_TITLE + "\n\nv2\n")
    assert "v1" not in again and "v2" in again and "after text" in again and "kept text" in again
    assert again.count(bench_report.GPU_SECTION_TITLE) == 1
