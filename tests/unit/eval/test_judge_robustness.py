"""Master-key probes (task=judge_robustness) and the judge.master_key_negatives hardening pairs."""

from __future__ import annotations

import pytest
import torch

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig, RewardConfig
from rlhf.eval.judge_robustness import false_positive_rates, meta_of
from rlhf.evaluate import EvaluateConfig, evaluate, input_errors
from rlhf.judge.factory import judge_training_pairs
from rlhf.judge.master_keys import HARDENING_KEYS, PROBE_KEYS, with_master_key_negatives

TINY = ModelConfig(source="tiny_random")


def test_false_positive_rates_hand_computed():
    correct = torch.tensor([1.0, 2.0, 3.0, 4.0])
    flawed = torch.tensor([0.0, 2.5, 1.0, 4.0])
    key = torch.tensor([1.0, 1.0, 3.5, 0.0])  # ties count: the reward cannot tell the key from the real reply
    r = false_positive_rates(correct, flawed, {"k": key})["k"]
    assert r == {"false_positive": 0.5, "beats_flawed": 0.5, "mean_score": 1.375}


def test_probe_and_hardening_keys_are_disjoint():
    assert not set(PROBE_KEYS) & set(HARDENING_KEYS)


def test_master_key_negatives_keep_the_chosen_reply_and_are_seeded():
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "subset": "s"} for i in range(20)]
    out = with_master_key_negatives(rows, 0.5, seed=1)
    assert out[:20] == rows and len(out) == 30
    for extra in out[20:]:
        assert extra["rejected"] in HARDENING_KEYS and extra["subset"] == "master-key"
        assert extra["chosen"] == "c" + extra["prompt"][1:]
    assert with_master_key_negatives(rows, 0.5, seed=1) == out
    ds = DatasetConfig(name="synthetic_prefs", num_train=40)
    assert len(judge_training_pairs(ds, JudgeConfig(master_key_negatives=0.25))) == 50
    assert len(judge_training_pairs(ds, JudgeConfig())) == 40


def test_meta_of_keeps_what_rewards_read():
    row = {"prompt": "P", "chosen": "c", "rejected": "r", "question": "Q", "answer": "#### 4", "subset": "s"}
    assert meta_of(row) == {"judge_prompt": "P", "question": "Q", "answer": "#### 4"}


def test_config_errors_for_the_task(tmp_path):
    base = dict(task="judge_robustness", output=str(tmp_path / "o.json"))
    assert input_errors(EvaluateConfig(**base)) == []
    errs = input_errors(EvaluateConfig(**base, scores=str(tmp_path / "s.jsonl")))
    assert any(e.startswith("scores: task=judge_robustness reads no file") for e in errs), errs
    errs = input_errors(EvaluateConfig(**base, checkpoint=str(tmp_path)))
    assert any(e.startswith("checkpoint: reward=exact_match loads no trained judge/RM") for e in errs), errs
    errs = input_errors(EvaluateConfig(**base, judge=JudgeConfig(master_key_negatives=2.0)))
    assert any(e.startswith("judge.master_key_negatives: must be in [0, 1]") for e in errs), errs


def test_exact_match_is_never_fooled(tmp_path):
    out = tmp_path / "r.json"
    res = evaluate(EvaluateConfig(task="judge_robustness", output=str(out), limit=12, model=TINY,
                                  reward=RewardConfig(name="exact_match")))
    assert res["n"] == 12 and res["false_positive_rate"] == 0.0
    assert set(res["keys"]) == set(PROBE_KEYS)
    assert out.is_file() and out.with_suffix(".md").is_file()


@pytest.mark.parametrize("hardening", [0.0, 0.5])
def test_bt_rm_probe_runs_on_the_tiny_model(tmp_path, hardening):
    res = evaluate(EvaluateConfig(task="judge_robustness", output=str(tmp_path / "r.json"), limit=6, model=TINY,
                                  reward=RewardConfig(name="bt_rm"),
                                  judge=JudgeConfig(train_steps=2, max_len=64, heldout_pairs=0,
                                                    master_key_negatives=hardening)))
    assert res["master_key_negatives"] == hardening
    assert 0.0 <= res["false_positive_rate"] <= 1.0 and len(res["keys"]) == len(PROBE_KEYS)


def test_exclude_subsets_drops_those_training_pairs_and_names_unknown_ones():
    ds = DatasetConfig(name="synthetic_prefs", num_train=36)  # 6 subsets x 6 pairs
    rows = judge_training_pairs(ds, JudgeConfig(exclude_subsets=["synth-format"]))
    assert len(rows) == 30 and "synth-format" not in {r["subset"] for r in rows}
    with pytest.raises(ValueError, match=r"^judge\.exclude_subsets: \['synth-fmt'\] not among"):
        judge_training_pairs(ds, JudgeConfig(exclude_subsets=["synth-fmt"]))
