"""Every registered algorithm end to end through `python -m rlhf.train` on a tiny random model: plain backend with HF
rollouts (one Hydra multirun over all of them), exact resume, ZeRO-2 and ZeRO-3 with 2 CPU processes, and vLLM
rollouts.

The tiny random model earns reward 0 on every reply, so these runs check the machinery (metrics, checkpoints, resume,
ranks, engine sync, DAPO's refill rounds, DPO's tie handling), not learning; the direction of learning of each
algorithm is tests/unit/algo/test_algorithms.py."""

import json
import subprocess
from pathlib import Path

import pytest
from launch import PY, ROOT, TINY, child_env, learning_rows, metric_rows

from rlhf.backend.distributed import free_port

ALGOS = ["ppo", "grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce_pp", "online_dpo"]
# overlong_buffer (16 by default) must stay below max_new_tokens; 2 prompts x 4 samples, minibatches of 2
COMMON = ["generation.max_new_tokens=20", "algo.prompts_per_step=2", "algo.minibatch_size=2", "seed=1"]
# what each algorithm must log besides the shared keys
OWN_METRICS = {
    "ppo": ["value_loss", "clip_frac"], "grpo": ["clip_frac", "kl_loss"], "dr_grpo": ["clip_frac"],
    "dapo": ["algo/filtered_group_frac", "algo/sampling_rounds", "algo/overlong_penalty_mean"],
    "gspo": ["seq_ratio_mean"], "cispo": ["clip_frac"], "rloo": ["clip_frac", "kl"], "reinforce_pp": ["clip_frac"],
    "online_dpo": ["pair_count", "tied_pair_frac", "empty_minibatches"],
}
SHARED = ["reward_mean", "response_length", "optimizer_steps", "skipped_updates", "step_seconds", "lr"]


def multirun(sweep_dir: Path, *overrides: str, env=None, timeout: int = 900) -> None:
    cmd = [PY, "-m", "rlhf.train", "-m", f"hydra.sweep.dir={sweep_dir}", *TINY, *COMMON, *overrides,
           "algo=" + ",".join(ALGOS)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]


def job_dirs(sweep_dir: Path):
    """{algo: its job dir} from the sweep's own summary (Hydra numbers jobs in override order)."""
    rows = [json.loads(x) for x in (sweep_dir / "summary.jsonl").read_text().splitlines()]
    return {r["algo"]: sweep_dir / r["dir"] for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("algos")
    multirun(sweep, "steps=2", "save_every=1")
    return sweep


def test_every_algorithm_trains_logs_and_checkpoints(reference):
    jobs = job_dirs(reference)
    assert sorted(jobs) == sorted(ALGOS)
    for name, d in jobs.items():
        rows = [r for r in metric_rows(d) if "reward_mean" in r]
        assert [r["step"] for r in rows] == [1, 2], name
        missing = [k for k in SHARED + OWN_METRICS[name] if k not in rows[-1]]
        assert not missing, (name, missing)
        summary = json.loads((d / "summary.json").read_text())
        assert {"eval_before", "eval_after"} <= set(summary), name
        assert (d / "checkpoints" / "step_000002" / "COMPLETE").is_file(), name
        assert (d / "summary.md").is_file(), name
    dapo = [r for r in metric_rows(jobs["dapo"]) if "reward_mean" in r]
    # every reply of the tiny model is wrong and overlong: all groups flat, 3 refill rounds, flat groups fill in
    assert all(r["algo/filtered_group_frac"] == 1.0 and r["algo/sampling_rounds"] == 3 for r in dapo)
    dpo = [r for r in metric_rows(jobs["online_dpo"]) if "reward_mean" in r]
    assert all(r["pair_count"] == 0 and r["optimizer_steps"] == 0 for r in dpo)  # all ties: no step, no error


def test_every_algorithm_resumes_exactly(reference, tmp_path):
    """One step, then resume=auto to two steps (the same sweep dir, so each job finds its own checkpoint): the
    metrics of both steps equal the uninterrupted run's, for every algorithm (DAPO's refill rounds included)."""
    multirun(tmp_path, "steps=1")
    multirun(tmp_path, "steps=2", "resume=auto")
    ref, got = job_dirs(reference), job_dirs(tmp_path)
    train = lambda d: [r for r in learning_rows(d) if "reward_mean" in r]  # noqa: E731 (evals differ: one ran at step 1)
    for name in ALGOS:
        assert train(got[name]) == train(ref[name]), name


@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("name", ALGOS)
def test_every_algorithm_runs_under_deepspeed_with_two_processes(tmp_path, name, stage):
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m",
           "rlhf.train", f"hydra.run.dir={tmp_path}", *TINY, *COMMON, f"algo={name}", "steps=1", f"hardware={stage}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=child_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [r for r in metric_rows(tmp_path) if "reward_mean" in r]
    assert len(rows) == 1 and all(k in rows[0] for k in OWN_METRICS[name]), rows
    assert (tmp_path / "checkpoints" / "step_000001" / "COMPLETE").is_file()


@pytest.mark.vllm
def test_every_algorithm_runs_on_vllm_rollouts(tmp_path):
    """Each job starts its own engine (and frees it for the next); the engine's sampling log-probs match the trainer's
    recomputed ones after every sync."""
    env = child_env(VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.pop("OMP_NUM_THREADS", None)
    multirun(tmp_path, "steps=2", "hardware=cpu_vllm", "model.tiny.hidden_size=128", "model.tiny.num_attention_heads=2",
             "model.tiny.num_key_value_heads=1", "eval_before=false", env=env, timeout=1500)
    for name, d in job_dirs(tmp_path).items():
        rows = [r for r in metric_rows(d) if "reward_mean" in r]
        assert len(rows) == 2 and all(r["time/sync"] > 0 for r in rows), name
        if name != "online_dpo":  # DPO computes no per-token log-probs of the whole rollout to compare with
            assert all(r["engine_logprob_diff_max"] < 1e-2 for r in rows), (name, rows)


def test_resume_refused_between_dpo_reference_refreshes(tmp_path):
    """online_dpo with ref_refresh_steps=2: a checkpoint at step 1 would resume with the wrong reference."""
    out = [PY, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", *TINY, *COMMON, "algo=online_dpo",
           "model.lora.enabled=false", "algo.ref_refresh_steps=2"]
    proc = subprocess.run(out + ["steps=1"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(out + ["steps=3", "resume=auto"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=child_env())
    assert proc.returncode == 2 and "resume: online_dpo refreshes its reference every 2 steps" in proc.stderr, \
        proc.stderr[-2000:]


def test_algorithm_keys_of_another_algorithm_fail_at_startup(tmp_path):
    proc = subprocess.run([PY, "-m", "rlhf.train", f"hydra.run.dir={tmp_path}", *TINY, "algo=grpo",
                           "algo.clip_high=0.28"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=child_env())
    assert proc.returncode != 0 and "algo.clip_high" in proc.stderr and "GRPOConfig" in proc.stderr
    assert not (tmp_path / "config.yaml").exists()


