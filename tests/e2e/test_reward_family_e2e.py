"""reward=routed, reward.ensemble and the offline evaluations of issue-13 rewards, end to end on the tiny model."""

import json
import subprocess
import sys

from helpers import ROOT

from test_train_e2e import run_train


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_routed_grpo_run_logs_the_judge_call_rate(tmp_path):
    run_train(tmp_path, "reward=routed", "reward.ensemble=2", "reward.route_by=ensemble", "reward.route_budget=0.5",
              "algo=grpo", "steps=2", "algo.prompts_per_step=2", "algo.samples_per_prompt=3",
              "algo.minibatch_size=6", "judge.train_steps=2", "judge.batch_size=2", "judge.num_demos=0",
              "judge.heldout_pairs=4")
    steps = [r for r in _rows(tmp_path) if "reward_mean" in r]
    assert len(steps) == 2
    for r in steps:  # 2 groups of 3 replies: 6 pairs, half of them judged
        assert r["reward/pairs"] == 6 and r["reward/judge_call_rate"] == 0.5
        assert 0.0 <= r["reward/rm_judge_agreement"] <= 1.0 and "reward/ensemble_pair_std" in r
    assert (tmp_path / "rm" / "rm_meta.json").is_file()  # the RM trained in the run, saved under rm/
    assert json.loads((tmp_path / "rm" / "rm_meta.json").read_text())["ensemble"] == 2
    bad = run_train(tmp_path / "bad", "reward=routed", "algo=grpo", "algo.samples_per_prompt=1",
                    "algo.minibatch_size=2", "algo.prompts_per_step=2", check=False)
    assert bad.returncode == 2 and "algo.samples_per_prompt=1 needs to be >= 2" in bad.stderr


def test_routing_evaluation_writes_table_and_plot(tmp_path):
    out = tmp_path / "routing.json"
    cmd = [sys.executable, "-m", "rlhf.evaluate", "task=routing", "model=tiny_random", "reward=routed",
           "reward.ensemble=2", "judge.train_steps=2", "judge.num_demos=0", "limit=12", f"output={out}",
           f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["n"] == 12 and set(res["accuracy"]) == {"uncertainty (margin)", "uncertainty (ensemble)", "random"}
    for accs in res["accuracy"].values():  # 0 % calls = the RM alone, 100 % = the judge alone
        assert accs[0] == res["rm_accuracy"] and accs[-1] == res["judge_accuracy"]
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_preference_evaluation_reports_how_far_the_rm_follows_flipped_labels(tmp_path):
    out = tmp_path / "prefs.json"
    cmd = [sys.executable, "-m", "rlhf.evaluate", "task=preference", "model=tiny_random", "reward=bt_rm",
           "reward.robust=r3m", "dataset=synthetic_prefs", "dataset.num_train=8", "dataset.num_test=6",
           "dataset.label_noise=0.25", "judge.train_steps=2", "judge.batch_size=4", "judge.max_len=128",
           f"output={out}", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["n"] == 6 and 0.0 <= res["accuracy"] <= 100.0
    # 2 of the 8 training pairs flipped: each share is a multiple of 1/2 (flipped) or 1/6 (clean)
    assert res["train_flipped_followed"] in (0.0, 50.0, 100.0)
    assert round(res["train_clean_followed"] * 6 / 100, 6) == round(res["train_clean_followed"] * 6 / 100)
    assert "Training pairs ranked as labelled: flipped" in out.with_suffix(".md").read_text()


def test_routed_and_hardened_robust_ensemble_rm_on_chat_prompts(tmp_path):
    """Chat prompts: routed (RM + rubric judge) and a bt_rm trained with R3M, two heads and master-key negatives."""
    common = ["dataset=synthetic_chat", "algo=grpo", "steps=1", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
              "algo.minibatch_size=4", "judge.train_steps=2", "judge.batch_size=2", "judge.num_demos=0",
              "judge.heldout_pairs=4", "num_eval=2", "judge=general_chat"]
    run_train(tmp_path / "routed", "reward=routed", "reward.route_budget=1.0", *common)
    steps = [r for r in _rows(tmp_path / "routed") if "reward_mean" in r]
    assert steps[0]["reward/judge_call_rate"] == 1.0
    assert json.loads((tmp_path / "routed" / "summary.json").read_text())["task"] == "chat"
    run_train(tmp_path / "rm", "reward=bt_rm", "reward.robust=r3m", "reward.ensemble=2", "reward.ensemble_agg=lcb",
              "judge.master_key_negatives=0.5", *common)
    rows = _rows(tmp_path / "rm")
    rm_rows = [r for r in rows if r.get("phase") == "judge" and "judge/outlier_fraction" in r]
    assert len(rm_rows) == 4  # 2 members x 2 steps, each with R3M's outlier fraction
    assert "reward/judge_ensemble_std" in [r for r in rows if "reward_mean" in r][0]
