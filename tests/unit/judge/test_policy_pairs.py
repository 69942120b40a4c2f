"""On-policy judge pairs (judge.policy_pairs): grading, pairing and mixing, by hand."""

from __future__ import annotations

import pytest

from rlhf.judge.policy_pairs import SUBSET_VS_POLICY, SUBSET_VS_REFERENCE, mix_in, policy_pairs, unique

ANSWER = "11 + 48 = <<11+48=59>>59\n#### 59"
META = {"judge_prompt": "Lucas collected 11 books and 48 books. How many?", "answer": ANSWER}


def test_wrong_replies_are_rejected_against_right_ones_of_the_same_prompt():
    right = ["11 + 48 = 59\n#### 59", "The answer is 59."]  # flexible: the final number is what counts
    wrong = ["11 + 48 = 59 books.\n#### 58", "#### 2", "I can't help."]
    rows = policy_pairs([(META, [wrong[0], right[0], wrong[1], right[1], wrong[2], wrong[0]])])
    assert [r["rejected"] for r in rows] == wrong  # the repeated reply counts once
    assert [r["chosen"] for r in rows] == [right[0], right[1], right[0]]  # right replies cycled
    assert {r["subset"] for r in rows} == {SUBSET_VS_POLICY}
    assert all(r["prompt"] == META["judge_prompt"] and r["answer"] == ANSWER for r in rows)


def test_without_a_right_reply_the_reference_solution_is_chosen():
    rows = policy_pairs([(META, ["#### 58", "#### 60"])])
    assert [r["chosen"] for r in rows] == ["11 + 48 = 59\n#### 59"] * 2  # calculator annotations removed
    assert {r["subset"] for r in rows} == {SUBSET_VS_REFERENCE}


def test_groups_without_a_wrong_reply_or_an_answer_give_no_pair():
    assert policy_pairs([(META, ["#### 59", "59"]), ({"judge_prompt": "Say hi.", "reference": "Hi!"}, ["Hello"])]) \
        == []


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
