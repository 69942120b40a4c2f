"""Prompt tasks: items and references per dataset, chat transcripts, held-out metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from helpers import FIXTURES
from rlhf.config import DatasetConfig
from rlhf.dataset.synthetic_chat import synthetic_chat_rows
from rlhf.task import TASK_DATASETS, build_task
from rlhf.task.chat import ChatTask, transcript_messages
from rlhf.task.math import MathTask


def test_transcript_becomes_messages_ending_with_the_user():
    text = "Human: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
    assert transcript_messages(text) == [{"role": "user", "content": "Hi there"},
                                         {"role": "assistant", "content": "Hello! How can I help?"},
                                         {"role": "user", "content": "Name a fruit."}]
    assert transcript_messages("Just a plain request.") == [{"role": "user", "content": "Just a plain request."}]
    with pytest.raises(ValueError, match="does not end with a user turn"):
        transcript_messages("Human: Hi\n\nAssistant: Hello")


def test_math_items_carry_the_reference_answer():
    task = build_task(DatasetConfig(num_test=3))
    assert isinstance(task, MathTask) and task.headline == "em_flexible"
    item = task.items("test")[0]
    assert item.answer and "#### " in item.answer and item.reference is None
    assert item.meta["judge_prompt"].endswith(DatasetConfig().system_prompt)  # the format instruction is shown


def test_chat_items_from_hh_rlhf_fixture_and_synthetic_chat():
    hh = build_task(DatasetConfig(name="hh_rlhf", path=str(FIXTURES / "hh_rlhf_sample.jsonl"), system_prompt=None))
    item = hh.items("test")[0]
    assert isinstance(hh, ChatTask) and item.messages[-1]["role"] == "user" and item.reference and item.answer is None
    cfg = DatasetConfig(name="synthetic_chat", num_train=1000, num_test=1000, system_prompt=None)
    train = {r["prompt"] for r in synthetic_chat_rows(cfg, "train")}
    test = {r["prompt"] for r in synthetic_chat_rows(cfg, "test")}
    assert train and test and not train & test  # disjoint (request, topic) combinations
    assert set(TASK_DATASETS) == {"synthetic_math", "gsm8k", "synthetic_chat", "hh_rlhf"}
    with pytest.raises(ValueError, match="no prompts to train on"):
        build_task(DatasetConfig(name="synthetic_prefs"))


def test_chat_metrics_win_rate_against_the_reference():
    task = build_task(DatasetConfig(name="synthetic_chat", num_test=4, system_prompt=None))
    items = task.items("test")
    scores = {"a": 2.0, "b": 0.0, "c": 1.0, "d": 1.0}  # reply scores; every reference scores 1.0

    def scorer(metas, replies):
        return torch.tensor([scores.get(r, 1.0) for r in replies])

    out = task.metrics(items, ["a", "b", "c", "d"], [3.0, 5.0, 1.0, 3.0], scorer)
    # wins: a beats 1.0, b loses, c and d tie (1/2 each) -> (1 + 0 + .5 + .5) / 4 = .5
    assert out.summary == {"n": 4, "reward_mean": 1.0, "reference_reward_mean": 1.0, "win_rate": 0.5,
                           "mean_response_tokens": 3.0}
    assert out.examples[0]["reference"] == items[0].reference and out.examples[0]["reward"] == 2.0
    with pytest.raises(ValueError, match="judge or reward model"):
        task.metrics(items, ["a"] * 4, [1.0] * 4, None)
