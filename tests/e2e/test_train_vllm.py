"""`python -m rlhf.train hardware=cpu_vllm`: rollouts from a colocated vLLM engine that is synced after every update."""

import json
import os
import re
import subprocess
import sys

import pytest
from launch import VLLM_SHAPES
from test_train_e2e import ROOT, TINY

pytestmark = pytest.mark.vllm

VLLM_TINY = [o for o in TINY if not o.startswith("model=")] + ["model=tiny_random", *VLLM_SHAPES]


def test_vllm_rollouts_follow_the_updated_policy(tmp_path):
    overrides = VLLM_TINY + [
        "hardware=cpu_vllm", "algo=grpo", "steps=3", "algo.prompts_per_step=2",
        "algo.samples_per_prompt=2", "algo.minibatch_size=4", "algo.lr=5e-3", "algo.entropy_coef=0.1",
        "eval_before=false",
    ]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert len(steps) == 3
    assert all(r["time/sync"] > 0 for r in steps)
    # the weights move a lot at this learning rate: the engine's sampling log-probs match the trainer's recomputed
    # ones at steps 2 and 3 only if every sync was applied
    for r in steps:
        assert r["engine_logprob_diff_max"] < 1e-2, r
    assert (tmp_path / "eval.json").is_file()


def test_vllm_sync_with_a_judge_adapter_on_the_actor_base(tmp_path):
    """reward=lora_judge with a LoRA actor: the judge is a second adapter on the actor's base. The sync must push the
    actor's adapter only (a large, trained judge adapter merged in would show as a log-prob gap to the trainer)."""
    overrides = VLLM_TINY + [
        "model.lora.enabled=true", "hardware=cpu_vllm", "algo=grpo", "steps=2",
        "algo.prompts_per_step=2", "algo.samples_per_prompt=2", "algo.minibatch_size=4", "algo.lr=5e-3",
        "eval_before=false", "reward=lora_judge", "judge.train_steps=3", "judge.batch_size=2", "judge.lr=5e-2",
        "judge.num_demos=0", "judge.max_len=384",
    ]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "on the actor's base model" in (tmp_path / "train.log").read_text()
    steps = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "reward_mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["engine_logprob_diff_max"] < 1e-2, r


def test_adapter_only_sync_serves_the_actor_lora_through_vllm(tmp_path):
    """hardware.vllm_lora_sync: only the actor's adapter goes to vLLM (its own LoRA support), the engine keeps the
    base. At this learning rate the adapter moves a lot: the engine's sampling log-probs match the trainer's only if
    every refreshed adapter was served."""
    overrides = VLLM_TINY + [
        "model.lora.enabled=true", "model.lora.dropout=0.0", "hardware=cpu_vllm",
        "hardware.vllm_lora_sync=true", "algo=grpo", "steps=3", "algo.prompts_per_step=2",
        "algo.samples_per_prompt=2", "algo.minibatch_size=4", "algo.lr=5e-2", "algo.entropy_coef=0.1",
        "eval_before=false",
    ]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "reward_mean" in r]
    assert len(steps) == 3
    for r in steps:
        assert r["engine_logprob_diff_max"] < 1e-2, r
        assert 0 < r["sync_bytes"] < 2_000_000  # the adapter, not the model
    assert steps[-1]["kl"] > 0  # the adapter did move away from the base
    assert len(list((tmp_path / "vllm_lora").iterdir())) == 1  # only the version being served is kept


@pytest.mark.parametrize("reward,extra", [
    ("rubric_judge", []),
    # a large lr moves the judge adapter far: vLLM agrees with transformers only if it serves the trained adapter
    ("lora_judge", ["judge.train_steps=3", "judge.batch_size=2", "judge.lr=5e-2"]),
])
def test_judge_scored_by_the_rollout_engine(tmp_path, reward, extra):
    """judge.vllm with adapter-only sync: one engine serves the actor (a LoRA request) and the frozen judge (the
    rubric judge: the base, no request; the lora_judge: its trained adapter as a second, pinned LoRA request). At
    start-up a few held-out pairs are scored both ways and must agree; the run trains and the judge's held-out pair
    accuracy is measured through vLLM."""
    overrides = VLLM_TINY + [
        "model.lora.enabled=true", "model.lora.dropout=0.0", "hardware=cpu_vllm",
        "hardware.vllm_lora_sync=true", f"reward={reward}", "judge.vllm=true", "judge.num_demos=0",
        "judge.max_len=384", "judge.heldout_pairs=4", "algo=grpo", "steps=2", "algo.prompts_per_step=2",
        "algo.samples_per_prompt=2", "algo.minibatch_size=4", "eval_before=false", *extra,
    ]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([sys.executable, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = (tmp_path / "train.log").read_text()
    assert f"judge.vllm: {reward} verdicts scored by the vLLM engine" in log and "held-out pair accuracy" in log
    gap = float(re.search(r"vLLM and transformers agree within (\S+) on 4 held-out pairs", log).group(1))
    print(f"{reward}: vLLM vs transformers verdict scores, max gap {gap:.2e}")
    assert gap < 2e-3
    if reward == "lora_judge":  # the agreement is informative: served without its adapter the judge scores otherwise
        moved = float(re.search(r"without the adapter the same scores move by up to (\S+)", log).group(1))
        print(f"lora_judge: the adapter moves the scores by up to {moved:.2e}")
        assert moved > 20 * gap and moved > 1e-3
    steps = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "reward_mean" in r]
    assert len(steps) == 2 and all("reward/judge_score_mean" in r for r in steps)
