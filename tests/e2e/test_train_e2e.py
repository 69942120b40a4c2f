"""End-to-end runs of `python -m rlhf.train` on a tiny random model, and config validation at start-up (the composed
config checks without a run: tests/unit/test_config.py)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from safetensors.torch import load_file

TINY = [
    "model=tiny_random", "logging.wandb=disabled", "logging.progress=false", "num_eval=4",
    "generation.max_new_tokens=12", "generation.eval_max_new_tokens=12", "dataset.num_train=64", "dataset.num_test=8",
]


def run_train(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rlhf.train", f"hydra.run.dir={run_dir}", *TINY, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


METRIC_KEYS = {"reward_mean", "reward_std", "em_strict", "em_flexible", "kl", "policy_loss", "value_loss", "entropy",
               "clip_frac", "response_length", "tokens_per_s", "step_seconds"}


@pytest.mark.parametrize("algo,extra", [
    ("ppo", ["algo.entropy_coef=0.05", "algo.kl_in=loss", "algo.kl_estimator=k3", "save_every=2"]),
    ("grpo", ["algo.entropy_coef=0.05", "algo.loss_agg=seq_mean", "algo.micro_batch_size=1"]),
])
def test_tiny_run_is_complete_and_changes_parameters(tiny_lm, tmp_path, algo, extra):
    steps = 3
    run_train(tmp_path, f"algo={algo}", f"steps={steps}", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
              "algo.minibatch_size=2", "algo.lr=1e-3", *extra)
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "plots.png", "summary.json", ".hydra/config.yaml",
                 "report.md", "samples.jsonl"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert f"algo: {algo}" in report and "Best-scored sampled replies" in report and "![training curves]" in report
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    missing = METRIC_KEYS - set(train_rows[0]) - ({"value_loss"} if algo == "grpo" else set())
    assert not missing, missing
    evals = json.loads((tmp_path / "eval.json").read_text())
    assert {"before", "after"} <= set(evals) and evals["after"]["n"] == 4
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    assert ckpts[-1].name == f"step_{steps:06d}" and (ckpts[-1] / "COMPLETE").is_file()
    if algo == "ppo":
        assert [c.name for c in ckpts] == ["step_000002", "step_000003"]
        assert (ckpts[-1] / "value_head.safetensors").is_file()
    # parameters changed: compare the saved weights with a fresh model built from the same seed
    fresh, _ = tiny_lm(seed=0)
    trained = load_file(str(ckpts[-1] / "model" / "model.safetensors"))
    changed = [k for k, v in fresh.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert len(changed) > len(trained) // 2, f"only {len(changed)} of {len(trained)} tensors changed"


def test_lora_run_saves_adapter_only(tmp_path):
    run_train(tmp_path, "algo=grpo", "steps=1", "model.lora.enabled=true", "model.lora.r=4", "algo.prompts_per_step=2",
              "algo.samples_per_prompt=2", "algo.minibatch_size=4", "algo.entropy_coef=0.05", "algo.lr=1e-2")
    ckpt = tmp_path / "checkpoints" / "step_000001"
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model").exists()
    adapter = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA B never moved"


def test_time_budget_ends_training_and_the_bar_counts_seconds(tmp_path):
    """max_train_seconds: the run stops after the step that spends the budget, then evaluates and saves as usual;
    the progress bar counts training seconds against the budget (not steps against a step cap it will not reach)."""
    proc = run_train(tmp_path, "algo=grpo", "steps=1000", "max_train_seconds=1", "algo.prompts_per_step=2",
                     "algo.samples_per_prompt=2", "algo.minibatch_size=4", "eval_before=false", "logging.progress=true")
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    n = len([r for r in rows if "reward_mean" in r])
    assert 1 <= n < 50  # a tiny step takes a fraction of a second
    assert f"time budget: 1 s of training reached after step {n} of 1000" in proc.stdout + proc.stderr
    assert "/1 [" in proc.stderr and f"step={n}/1000" in proc.stderr, proc.stderr[-1500:]
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == n
    assert (tmp_path / "checkpoints" / f"step_{n:06d}").is_dir()


@pytest.mark.parametrize("override,key", [
    ("algo.klcoef=0.1", "algo.klcoef"),
    ("algo.kl_coef=-0.5", "algo.kl_coef"),
    ("algo.lr=fast", "algo.lr"),
    ("algo.minibatch_size=5", "algo.minibatch_size"),
    ("algo.micro_batch_size=3", "algo.micro_batch_size"),
    ("generation.max_new_tokens=-3", "generation.max_new_tokens"),
    ("algo.kl_estimator=k7", "algo.kl_estimator"),
    ("reward.mode=fuzzy", "reward.mode"),
])
def test_bad_config_fails_at_startup_naming_the_key(tmp_path, override, key):
    proc = run_train(tmp_path, override, check=False)
    assert proc.returncode != 0
    assert key in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_help_lists_groups():
    proc = subprocess.run([sys.executable, "-m", "rlhf.train", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    for group in ("model", "dataset", "reward", "judge", "algo", "hardware"):
        assert f"{group}:" in proc.stdout


@pytest.mark.parametrize("reward", ["lora_judge", "bt_rm"])
def test_judge_reward_run_trains_the_judge_then_the_actor(tmp_path, reward):
    """`python -m rlhf.train reward=lora_judge algo=ppo` on the tiny model: judge first, then PPO, one run dir.

    lora_judge runs with a LoRA actor, so the judge is a second adapter on the actor's base (judge.share_base)."""
    args = [f"reward={reward}", "algo=ppo", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
            "algo.minibatch_size=4", "judge.train_steps=2", "judge.batch_size=2", "judge.num_demos=0",
            "judge.max_len=384", "save_every=1", "judge.policy_pairs=3", "judge.policy_samples=2"]
    if reward == "lora_judge":
        args += ["model.lora.enabled=true", "model.lora.target_modules=[q_proj,v_proj]", "algo.lr=1e-2"]
    run_train(tmp_path, "steps=2", *args)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    judge_rows = [r for r in rows if any(k.startswith("judge/") for k in r)]
    steps = [r for r in rows if "reward_mean" in r]
    assert judge_rows, "judge training metrics missing from metrics.jsonl"
    assert all(r["phase"] == "judge" for r in judge_rows)
    assert len(steps) == 2 and all("em_flexible" in r for r in steps)
    assert all(0.0 <= r["em_flexible"] <= 1.0 for r in steps)
    assert any(k.startswith("reward/") for k in steps[0])
    assert (tmp_path / "judge").is_dir()
    # judge.policy_pairs: the actor's 2 samples on each of 3 train prompts as pairs (how many depends on what the
    # random model writes: a wrong reply vs a right one, and every reply that states a number as a minimal pair)
    pairs = [json.loads(line) for line in (tmp_path / "judge_policy_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) <= 12 and len({p["prompt"] for p in pairs}) <= 3
    assert all(p["subset"].startswith("policy-") and "####" in p["answer"] for p in pairs)
    assert "on-policy pairs from 6 replies to 3 train prompts" in (tmp_path / "train.log").read_text()
    acc = json.loads((tmp_path / "summary.json").read_text())["judge"]["heldout_accuracy"]
    assert 0.0 <= acc <= 1.0  # what table_actor shows beside the actor's EM
    log_text = (tmp_path / "train.log").read_text()
    if reward == "lora_judge":
        assert "on the actor's base model" in log_text
        ckpt = tmp_path / "checkpoints"
        a1, a2 = (load_file(str(ckpt / f"step_00000{i}" / "adapter" / "adapter_model.safetensors")) for i in (1, 2))
        assert not any("judge" in k for k in a2)  # the actor's checkpoint holds the actor's adapter only
        assert any(not torch.equal(a1[k], a2[k]) for k in a1)  # and the actor trained next to the frozen judge
    # resume with more steps: the judge trained in this run is loaded, not trained again
    run_train(tmp_path, "steps=3", "resume=auto", *args)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "judge"] == [r["step"] for r in judge_rows]
    assert [r["step"] for r in rows if "reward_mean" in r] == [1, 2, 3]


@pytest.mark.parametrize("dataset,reward,extra", [
    ("synthetic_chat", "bt_rm", []),
    ("hh_rlhf", "rubric_judge", ["judge=general_chat", f"dataset.path={ROOT / 'tests/fixtures/hh_rlhf_sample.jsonl'}",
                                 "reward.judge_signal=pointwise"]),
])
def test_rl_on_chat_prompts_with_a_reward_model_or_judge(tmp_path, dataset, reward, extra):
    """The chat prompt task: RL on conversations scored by a trained BT RM or a rubric judge; held-out metrics are the
    reward of greedy replies and their win rate against the dataset's reference reply."""
    run_train(tmp_path, f"dataset={dataset}", f"reward={reward}", "steps=2", "algo.prompts_per_step=2",
              "algo.samples_per_prompt=2", "algo.minibatch_size=4", "judge.train_steps=2", "judge.batch_size=2",
              "judge.max_len=384", "num_eval=3", *extra)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "chat"
    for tag in ("eval_before", "eval_after"):
        ev = summary[tag]
        assert ev["n"] == 3 and 0.0 <= ev["win_rate"] <= 1.0
        assert math.isfinite(ev["reward_mean"]) and math.isfinite(ev["reference_reward_mean"])
    steps = [r for r in (json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())
             if "reward_mean" in r]
    assert len(steps) == 2 and all("em_flexible" not in r for r in steps)
    examples = json.loads((tmp_path / "eval.json").read_text())["after"]["examples"]
    assert examples and {"prompt", "response", "reference", "reward", "reference_reward"} <= set(examples[0])
