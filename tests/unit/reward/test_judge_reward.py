"""build_judge_reward end to end on the tiny random model with a hand-made Rollout."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.config import (
    AlgoConfig,
    Config,
    DatasetConfig,
    HardwareConfig,
    JudgeConfig,
    ModelConfig,
    RewardConfig,
)
from rlhf.reward import build_reward
from rlhf.reward.base import RewardContext
from rlhf.reward.judge_reward import (
    JudgeReward,
    affine,
    build_judge_reward,
    group_ranking_accuracy,
)
from rlhf.rollout.base import Rollout
from rlhf.task.math_grading import reference_solution

PROMPTS = ["Add 2 and 3.", "Tom has 5 apples and eats 1. How many are left?"]
RESPONSES = ["2 + 3 = 5.\n#### 5", "2 + 3 = 6.\n#### 6", "5 - 1 = 4.\n#### 4", "I can't help with that."]
META = [{"question": "Add 2 and 3.", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
        {"question": "Tom has 5 apples and eats 1. How many are left?", "answer": "5 - 1 = <<5-1=4>>4\n#### 4"}]


def make_rollout() -> Rollout:
    b, p, r = 4, 6, 5
    ids = torch.randint(10, 100, (b, p + r))
    return Rollout(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=torch.ones(b, r),
                   prompt_len=p, prompts=PROMPTS, responses=RESPONSES, group_size=2, meta=META)


def make_cfg(name: str, judge_kw=None, **reward) -> Config:
    judge = JudgeConfig(**{"num_demos": 1, "max_len": 96, "train_steps": 2, "batch_size": 2, "lr": 1e-3,
                           "eval_batch_size": 4, **(judge_kw or {})})
    return Config(model=ModelConfig(source="tiny_random"), dataset=DatasetConfig(), judge=judge,
                  reward=RewardConfig(name=name, **reward), algo=AlgoConfig(), hardware=HardwareConfig())


def make_context(cfg, tmp_path, log=None) -> RewardContext:
    return RewardContext(cfg=cfg, tokenizer=None, run_dir=tmp_path, device=torch.device("cpu"), log=log)


def test_reference_solution_and_affine():
    assert reference_solution("2 + 3 = <<2+3=5>>5\n#### 5") == "2 + 3 = 5\n#### 5"
    assert affine(torch.tensor([0.25, 1.0]), 2.0, -1.0).tolist() == [-0.5, 1.0]


def test_rubric_judge_pairwise_reward_end_to_end(tmp_path):
    cfg = make_cfg("rubric_judge", judge_kw={"generate_rationale": True, "rationale_max_new_tokens": 2},
                   judge_signal="pairwise", scale=2.0, shift=-1.0)
    reward = build_reward(cfg, make_context(cfg, tmp_path))
    assert isinstance(reward, JudgeReward)
    out = reward.score(make_rollout())
    assert out.rewards.shape == (4,) and out.rewards.dtype == torch.float32
    assert out.correct.tolist() == [True, False, True, False]
    p = torch.tensor([out.metrics["judge_score_mean"]])
    assert out.metrics["judge_reward_mean"] == pytest.approx(float(affine(p, 2.0, -1.0)), abs=1e-5)
    assert ((out.rewards >= -1.0) & (out.rewards <= 1.0)).all()  # 2 * P - 1 with P in [0, 1]
    assert out.metrics["em_flexible"] == 0.5
    assert {"judge_score_correct", "judge_score_wrong", "judge_position_bias"} <= set(out.metrics)
    rationale = json.loads((tmp_path / "judge_rationales.jsonl").read_text().splitlines()[0])
    assert rationale["response"] == RESPONSES[0] and rationale["rationale"][0] in "AB"


def test_pointwise_signal_in_rubric_range(tmp_path):
    cfg = make_cfg("rubric_judge", judge_signal="pointwise")
    reward = build_judge_reward(cfg, make_context(cfg, tmp_path))
    out = reward.score(make_rollout())
    assert ((out.rewards >= 1.0) & (out.rewards <= 5.0)).all()


@pytest.mark.parametrize("name", ["bt_rm", "lora_judge"])
def test_trains_first_without_checkpoint(tmp_path, name):
    cfg = make_cfg(name)
    calls = []
    ctx = make_context(cfg, tmp_path, log=lambda m, step, prefix: calls.append((prefix, step, m)))
    reward = build_judge_reward(cfg, ctx)
    # two training steps, then the held-out pair accuracy (judge.heldout_pairs) logged after the last of them
    assert [c[:2] for c in calls] == [("judge", 0), ("judge", 1), ("judge", 2)]
    assert "loss" in calls[1][2] and 0.0 <= calls[2][2]["heldout_accuracy"] <= 1.0
    assert calls[2][2]["heldout_pairs"] == cfg.judge.heldout_pairs
    assert reward.summary and "held-out pair accuracy" in next(iter(reward.summary))
    assert (tmp_path / "judge").is_dir()
    out = reward.score(make_rollout())
    assert out.rewards.shape == (4,) and torch.isfinite(out.rewards).all()
    # a second run loads the saved checkpoint instead of training
    cfg2 = make_cfg(name, checkpoint=str(tmp_path / "judge"))
    out2 = build_judge_reward(cfg2, make_context(cfg2, tmp_path / "second")).score(make_rollout())
    assert torch.allclose(out.rewards, out2.rewards, atol=1e-4)


def test_metrics_file_when_no_logger(tmp_path):
    cfg = make_cfg("bt_rm")
    build_judge_reward(cfg, make_context(cfg, tmp_path))
    lines = (tmp_path / "judge_metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "loss" in json.loads(lines[0]) and "heldout_accuracy" in json.loads(lines[2])


def test_reference_guided_reward_shows_each_item_its_reference(tmp_path):
    cfg = make_cfg("rubric_judge", judge_kw={"reference": "answer", "num_demos": 0}, judge_signal="pointwise")
    reward = build_judge_reward(cfg, make_context(cfg, tmp_path))
    prompts = reward.judge_prompts(make_rollout())
    assert [p.rsplit("\n", 1)[-1] for p in prompts] == ["5", "5", "4", "4"]
    assert all("[Reference answer]" in p for p in prompts)
    free = build_judge_reward(make_cfg("rubric_judge", judge_signal="pointwise"), make_context(cfg, tmp_path))
    assert not any("[Reference" in p for p in free.judge_prompts(make_rollout()))


class FixedScorer:
    """Pointwise scores 1, 2, 3, 4 for whatever it is shown."""

    def pointwise_scores(self, prompts, responses, rubrics=None):
        return torch.arange(1, len(responses) + 1, dtype=torch.float32)


def test_format_bonus_beside_the_judge_score_only_for_formatted_math_replies():
    cfg = make_cfg("lora_judge", scale=0.25, shift=-0.25, format_bonus=0.5)
    replies = ["2 + 3 = 5\n#### 5", "#### 5, then 5 + 2 = 7", "no answer", "5 - 1 = 4\n#### 4"]
    rollout = make_rollout()
    rollout.responses = replies
    out = JudgeReward(cfg, FixedScorer()).score(rollout)
    # judge 1..4 -> 0, .25, .5, .75; + .5 where `#### N` is the last number (replies 0 and 3)
    assert out.rewards.tolist() == [0.5, 0.25, 0.5, 1.25] and out.metrics["format_rate"] == 0.5
    assert out.metrics["judge_reward_mean"] == pytest.approx(0.375)  # the judge's part alone
    anywhere = make_cfg("lora_judge", scale=0.25, shift=-0.25, format_bonus=0.5, format_at_end=False)
    assert JudgeReward(anywhere, FixedScorer()).score(rollout).rewards.tolist() == [0.5, 0.75, 0.5, 1.25]
    chat = [{"question": "Say hi."}, META[0]]  # no reference answer: no format to reward
    assert JudgeReward(cfg, FixedScorer()).score_replies(chat, ["#### 5", "#### 5"]).tolist() == [0.0, 0.75]
    assert "format_rate" not in JudgeReward(make_cfg("lora_judge"), FixedScorer()).score(rollout).metrics


def test_group_ranking_accuracy_counts_right_wrong_pairs_within_each_prompt():
    # prompt 1: right 0.9 vs wrong 0.5, 0.9 -> 1 win + 1 tie of 2; prompt 2: all wrong (no pair); prompt 3: right
    # 0.2 vs wrong 0.4 -> 0 of 1. (1 + 0.5 + 0) / 3
    scores = torch.tensor([0.9, 0.5, 0.9, 0.1, 0.2, 0.3, 0.2, 0.4, 0.4])
    correct = torch.tensor([1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    assert group_ranking_accuracy(scores, correct, 3) == pytest.approx(1.5 / 4)
    assert torch.isnan(torch.tensor(group_ranking_accuracy(scores[3:6], correct[3:6], 3)))


def test_policy_pairs_need_a_training_run_to_sample_from(tmp_path):
    cfg = make_cfg("lora_judge", judge_kw={"policy_pairs": 2})
    with pytest.raises(ValueError, match=r"^judge\.policy_pairs: needs the actor of a training run"):
        build_judge_reward(cfg, make_context(cfg, tmp_path))


def test_policy_pairs_join_the_judge_training_pairs(tmp_path, monkeypatch):
    """The sampled groups become pairs, are written to the run dir and reach the judge's training rows."""
    import rlhf.judge.factory as factory
    seen = []
    monkeypatch.setattr(factory, "train_bt_rm", lambda rm, rows, *a, **k: seen.append(rows))
    cfg = make_cfg("bt_rm", judge_kw={"policy_pairs": 2, "policy_samples": 2, "policy_fraction": 0.5,
                                      "heldout_pairs": 0})
    ctx = make_context(cfg, tmp_path)
    ctx.sample_policy = lambda n, k: [(dict(META[0], judge_prompt=PROMPTS[0]), ["#### 5", "#### 6"]),
                                      (dict(META[1], judge_prompt=PROMPTS[1]), ["#### 3", "#### 3"])][:n]
    build_judge_reward(cfg, ctx)
    written = [json.loads(line) for line in (tmp_path / "judge_policy_pairs.jsonl").read_text().splitlines()]
    # prompt 1: right "#### 5" vs wrong "#### 6", and both replies as minimal pairs; prompt 2: one distinct reply
    assert [(r["subset"], r["chosen"]) for r in written] == [
        ("policy-vs-policy", "#### 5"), ("policy-minimal", "#### 5"), ("policy-minimal", "#### 5"),
        ("policy-minimal", "#### 4")]
    slip = written[1]["rejected"]  # the right reply with a seeded wrong answer
    assert [r["rejected"] for r in written] == ["#### 6", slip, "#### 6", "#### 3"] and slip != "#### 5"
    rows = seen[0]
    extra = [r for r in rows if r["subset"].startswith("policy-")]
    assert len(extra) == len(rows) - len(extra)  # half of the rows (and so of the draws)
