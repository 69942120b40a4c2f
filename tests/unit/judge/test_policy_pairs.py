"""On-policy judge pairs (judge.policy_pairs): grading, pairing and mixing, by hand."""

from __future__ import annotations

import random

import pytest

from rlhf.judge.policy_pairs import (
    SUBSET_MINIMAL,
    SUBSET_VS_POLICY,
    minimal_pair,
    mix_in,
    policy_pairs,
    unique,
    wrong_value,
)
from rlhf.task.math_grading import is_correct, with_final_answer

ANSWER = "11 + 48 = <<11+48=59>>59\n#### 59"
META = {"judge_prompt": "Lucas collected 11 books and 48 books. How many?", "answer": ANSWER}


def test_with_final_answer_replaces_the_number_flexible_matching_reads():
    assert with_final_answer("11 + 48 = 59 books.\n#### 58", "59") == "11 + 48 = 59 books.\n#### 59"
    # the strict `#### N` reading the same number is replaced too; other mentions stay
    assert with_final_answer("#### 13\nThe answer is 13.", "15") == "#### 15\nThe answer is 15."
    assert with_final_answer("It is -3 degrees.", "4") == "It is 4 degrees."
    assert with_final_answer("no number here", "4") is None


def test_minimal_pairs_differ_in_the_final_number_only():
    rng = random.Random(0)
    fixed, broken = minimal_pair("11 + 48 = 59 books.\n#### 58", ANSWER, False, rng)
    assert (fixed, broken) == ("11 + 48 = 59 books.\n#### 59", "11 + 48 = 59 books.\n#### 58")
    fixed, broken = minimal_pair("So 59 books.", ANSWER, True, rng)
    assert fixed == "So 59 books." and broken.startswith("So ") and broken.endswith(" books.")
    assert not is_correct(broken, ANSWER, "flexible")
    assert minimal_pair("I can't help.", ANSWER, False, rng) is None


def test_wrong_value_is_a_seeded_slip():
    assert {wrong_value(random.Random(s), "59") for s in range(50)} <= {"49", "57", "58", "60", "61", "69"}
    assert all(int(wrong_value(random.Random(s), "1")) >= 0 for s in range(50))
    assert wrong_value(random.Random(0), "2.5") == "2.51"


def test_pairs_of_one_prompt():
    right = ["11 + 48 = 59\n#### 59", "The answer is 59."]  # flexible: the final number is what counts
    wrong = ["11 + 48 = 59 books.\n#### 58", "#### 2", "I can't help."]
    rows = policy_pairs([(META, [wrong[0], right[0], wrong[1], right[1], wrong[2], wrong[0]])], seed=3)
    natural = [r for r in rows if r["subset"] == SUBSET_VS_POLICY]
    assert [r["rejected"] for r in natural] == wrong  # the repeated reply counts once
    assert [r["chosen"] for r in natural] == [right[0], right[1], right[0]]  # right replies cycled
    minimal = [r for r in rows if r["subset"] == SUBSET_MINIMAL]
    assert len(minimal) == 4  # every distinct reply that states a number (not the refusal)
    assert all(is_correct(r["chosen"], ANSWER, "flexible") and not is_correct(r["rejected"], ANSWER, "flexible")
               for r in minimal)
    assert all(r["prompt"] == META["judge_prompt"] and r["answer"] == ANSWER for r in rows)
    assert policy_pairs([(META, [wrong[0], right[0], wrong[1], right[1], wrong[2]])], seed=3) == rows[:3] + minimal


def test_no_right_reply_gives_minimal_pairs_only_and_chat_prompts_none():
    rows = policy_pairs([(META, ["#### 58", "#### 60"]), ({"judge_prompt": "Say hi.", "reference": "Hi!"}, ["1"])])
    assert [(r["chosen"], r["rejected"], r["subset"]) for r in rows] == [
        ("#### 59", "#### 58", SUBSET_MINIMAL), ("#### 59", "#### 60", SUBSET_MINIMAL)]


def test_unique_keeps_first_seen_order():
    assert unique(["a", " b", "a ", "b", "c"]) == ["a", " b", "c"]


@pytest.mark.parametrize("n_base,n_extra,fraction,copies", [
    (10, 2, 0.5, 10),  # 10 + 10: half of the draws; 2 rows repeated 5 times each
    (9, 2, 0.25, 3),  # ceil(0.25 * 9 / 0.75) = 3
    (3, 5, 0.5, 5),  # at least every extra row once
])
def test_mix_in_repeats_the_extra_rows_to_their_share(n_base, n_extra, fraction, copies):
    base = [{"id": f"b{i}"} for i in range(n_base)]
    extra = [{"id": f"e{i}"} for i in range(n_extra)]
    mixed = mix_in(base, extra, fraction)
    assert mixed[:n_base] == base and len(mixed) == n_base + copies
    assert [r["id"] for r in mixed[n_base:]] == [f"e{i % n_extra}" for i in range(copies)]


def test_mix_in_edges():
    base, extra = [{"id": "b"}], [{"id": "e"}]
    assert mix_in(base, [], 0.5) == base
    assert mix_in(base, extra, 1.0) == extra
    assert mix_in([], extra, 0.5) == extra
