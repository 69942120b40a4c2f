"""Exact resume after SIGKILL, checkpoint selection, refusing a pickled checkpoint, and the non-finite-update paths
of the trainer.

The killed-and-resumed run must end bitwise equal to an uninterrupted one: weights, value head, every learning metric
(reward, losses, KL, grad norm; not timings), eval.json and the KL controller's coefficient. PPO with an adaptive KL
controller and a warmup schedule is used so that every piece of resumable state (RNG, data position, AdamW moments,
LR schedule, KL coefficient) influences the result.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import legacy_message, trapped_checkpoint
from launch import ROOT, child_env, learning_rows, metric_rows, run_train, train_cmd
from safetensors.torch import load_file

from rlhf.backend.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    resolve_resume,
)

RESUME = ["algo=ppo", "steps=4", "save_every=2", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
          "algo.minibatch_size=2", "algo.lr=1e-3", "algo.critic_lr=1e-3", "algo.entropy_coef=0.05",
          "algo.kl_controller=adaptive", "algo.kl_target=0.01", "algo.kl_horizon=20", "algo.warmup_steps=3",
          "num_eval=2", "seed=7"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {path} appeared")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model/model.safetensors", "value_head.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys(), name
        diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not diff, f"{name}: {len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run (4 steps, checkpoints at 2 and final at 4)."""
    run = tmp_path_factory.mktemp("uninterrupted")
    run_train(run, *RESUME)
    return run


def test_sigkill_then_resume_auto_is_bitwise_identical(reference_run, tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(run, *RESUME), cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(run / "checkpoints" / "step_000002" / "COMPLETE", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    final = run / "checkpoints" / "step_000004"
    assert not final.exists(), "the run finished before it could be killed; nothing was tested"
    done_before = max(r["step"] for r in metric_rows(run))
    # Debris a crash can leave, all newer than the real checkpoint: never to be picked.
    (run / "checkpoints" / "step_000008").mkdir()  # empty
    half = run / "checkpoints" / "step_000009"
    (half / "model").mkdir(parents=True)
    (half / "model" / "model.safetensors").write_bytes(b"truncated")
    (run / "checkpoints" / ".tmp-step_000003-x").mkdir()
    expected = latest_checkpoint(run)
    assert expected is not None and expected.name == "step_000002"

    proc2 = run_train(run, *RESUME, "resume=auto")
    assert f"resumed from {expected} at step {int(expected.name[5:])}" in proc2.stderr + proc2.stdout
    assert_same_weights(reference_run / "checkpoints" / "step_000004", final)
    ref_rows, rows = learning_rows(reference_run), learning_rows(run)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows], "metrics.jsonl rows (dropped or duplicated?)"
    assert rows == ref_rows
    assert json.loads((run / "eval.json").read_text()) == json.loads((reference_run / "eval.json").read_text())
    state_ref = load_trainer_state(reference_run / "checkpoints" / "step_000004")
    state = load_trainer_state(final)
    assert not list(final.glob("*.pt")), "trainer state is JSON + safetensors, no pickle"
    assert state["kl_ctl"] == state_ref["kl_ctl"] and state["kl_ctl"]["value"] != 0.05  # adaptive coefficient moved
    assert state["scheduler"] == state_ref["scheduler"] and state["sampler"] == state_ref["sampler"]
    assert done_before < 4
    assert not (run / "checkpoints" / ".tmp-step_000003-x").exists(), "stale temp dirs are removed on resume"


def test_resume_with_nothing_left_to_train_exits_zero(reference_run):
    summary = (reference_run / "summary.json").read_text()
    rows = (reference_run / "metrics.jsonl").read_text()
    proc = run_train(reference_run, *RESUME, "resume=auto")
    assert "nothing left to train" in proc.stderr + proc.stdout
    assert (reference_run / "summary.json").read_text() == summary
    assert (reference_run / "metrics.jsonl").read_text() == rows


def test_resume_path_without_complete_marker_fails_in_one_line(tmp_path):
    bad = tmp_path / "checkpoints" / "step_000003"
    (bad / "model").mkdir(parents=True)
    proc = run_train(tmp_path / "run", *RESUME, f"resume={bad}", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: resume: {bad} is not a complete checkpoint (no COMPLETE marker)", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_cli_resume_from_a_pickled_checkpoint_fails_in_one_line(tmp_path):
    """An old pickled trainer_state.pt (booby-trapped) is refused in one line, never unpickled (the in-process
    checks are in tests/unit/backend/test_checkpoint_state.py)."""
    ckpt, marker = trapped_checkpoint(tmp_path, "os.system")
    proc = run_train(tmp_path / "run", "steps=1", f"resume={ckpt}", check=False, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: " + legacy_message(ckpt)), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_checkpoint_selection_skips_incomplete_and_empty_dirs(tmp_path):
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None  # no checkpoints/ at all
    root.mkdir()
    assert latest_checkpoint(tmp_path) is None and resolve_resume("auto", tmp_path) is None
    for step in (1, 3):
        (root / f"step_{step:06d}").mkdir()
        (root / f"step_{step:06d}" / "COMPLETE").write_text(f"{step}\n")
    (root / "step_000005").mkdir()  # empty
    (root / "step_000007" / "model").mkdir(parents=True)  # half-written
    (root / "step_000009").write_text("not a dir")
    (root / ".tmp-step_000011-abc").mkdir()
    (root / ".tmp-step_000011-abc" / "COMPLETE").write_text("11\n")  # still a temp dir: never picked
    assert latest_checkpoint(tmp_path) == root / "step_000003"
    assert resolve_resume("auto", tmp_path) == root / "step_000003"
    assert resolve_resume(str(root / "step_000001"), tmp_path) == root / "step_000001"
    for bad in ("step_000005", "step_000007"):
        with pytest.raises(FileNotFoundError, match="no COMPLETE marker"):
            resolve_resume(str(root / bad), tmp_path)


NON_FINITE = ["algo=grpo", "steps=4", "max_bad_steps=2", "eval_before=false", "algo.prompts_per_step=2",
              "algo.samples_per_prompt=2", "algo.minibatch_size=2"]


def test_repeated_non_finite_rewards_stop_after_a_checkpoint(tmp_path):
    """`reward.wrong_reward=1e39` (finite in the config, inf once the reward is float32, as an overflowing reward
    source would be; a nan in the config is refused at start-up): every reward of the (random) policy is non-finite;
    the CLI stops with status 3 and the cause in its last line, after a checkpoint."""
    proc = run_train(tmp_path, *NON_FINITE, "reward.wrong_reward=1e39", check=False)
    cause = "reward: 4 non-finite rewards"
    assert proc.returncode == 3, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert f"step 1 skipped (1 in a row): {cause}" in log and f"step 1 skipped (2 in a row): {cause}" in log
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last == (f"stopped: stopping after 2 consecutive non-finite steps; last cause: {cause}; "
                    "checkpoint saved at step 0"), last
    assert (tmp_path / "checkpoints" / "step_000000" / "COMPLETE").is_file()
    trained = [r for r in metric_rows(tmp_path) if "reward_mean" in r] if (tmp_path / "metrics.jsonl").exists() else []
    assert not trained, "no step may be logged as trained"


def in_process_trainer(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from rlhf.algo.registry import register_training_configs
    from rlhf.config import to_config
    from rlhf.trainer import Trainer

    register_training_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        dcfg = compose(config_name="config", overrides=[
            "model=tiny_random", "logging.wandb=disabled", "logging.progress=false", "logging.plots=false",
            "generation.max_new_tokens=8", "dataset.num_train=64", "dataset.num_test=8", "eval_before=false",
            "eval_after=false", *overrides])
    return Trainer(to_config(dcfg), tmp_path)


def test_repeated_non_finite_losses_stop_after_a_checkpoint(tmp_path, caplog):
    """An infinite entropy coefficient makes every minibatch loss -inf: each step is skipped, the second stops the run.
    (The config refuses inf at start-up, so it is set on the built trainer.)"""
    from rlhf.trainer import StopTraining

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/launch.py; restored below
    try:
        trainer = in_process_trainer(tmp_path, *NON_FINITE)
        trainer.cfg.algo.entropy_coef = float("inf")
        with caplog.at_level("WARNING", logger="rlhf"), pytest.raises(StopTraining) as err:
            trainer.train()
    finally:
        torch.set_num_threads(threads)
    cause = "update: all 2 minibatches had a non-finite loss or gradient"
    assert f"step 1 skipped (2 in a row): {cause}" in caplog.text
    assert str(err.value).endswith(f"last cause: {cause}; checkpoint saved at step 0")
    assert (tmp_path / "checkpoints" / "step_000000" / "COMPLETE").is_file() and trainer.step == 0


def test_one_non_finite_reward_skips_that_step_only(tmp_path, monkeypatch, caplog):
    """In process: the first rollout's rewards are NaN (a test-side wrapper around the reward source)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/launch.py; restored below
    try:
        trainer = in_process_trainer(tmp_path, *[o for o in RESUME if not o.startswith(("steps=", "save_every="))],
                                     "steps=2")
        _train_with_one_nan_reward(trainer, monkeypatch, caplog)
    finally:
        torch.set_num_threads(threads)
    assert [r["step"] for r in metric_rows(tmp_path) if "reward_mean" in r] == [1, 2]


def _train_with_one_nan_reward(trainer, monkeypatch, caplog) -> None:
    score, calls = trainer.reward.score, []

    def flaky(rollout):
        out = score(rollout)
        calls.append(1)
        if len(calls) == 1:
            out.rewards = torch.full_like(out.rewards, float("nan"))
        return out

    monkeypatch.setattr(trainer.reward, "score", flaky)
    with caplog.at_level("WARNING", logger="rlhf"):
        summary = trainer.train()
    assert "step 1 skipped (1 in a row): reward: 4 non-finite rewards" in caplog.text
    assert len(calls) == 3 and summary["step"] == 2 and trainer.bad_steps == 0
