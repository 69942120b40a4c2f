"""GSM8K answer extraction and exact-match scoring; expected values worked out by hand. (`python -m rlhf.evaluate
task=gsm8k` on the predictions fixture: tests/e2e/test_gsm8k_eval_cli.py.)"""

import pytest
from helpers import FIXTURES

from rlhf.eval.gsm8k import run_task
from rlhf.evaluate import EvaluateConfig
from rlhf.task.math_grading import (
    answer_is_final,
    extract_answer,
    is_correct,
    reference_answer,
    score_predictions,
)

PREDICTIONS = FIXTURES / "gsm8k_predictions.jsonl"

# (text, strict, flexible)
EXTRACTION_CASES = [
    ("#### 42", "42", "42"),
    ("The answer is 42.", None, "42"),  # trailing period is punctuation, not a decimal point
    ("#### 5.", "5", "5"),
    ("#### 1,000", "1000", "1000"),
    ("So she pays 1,234,567 in total.", None, "1234567"),
    ("#### -7", "-7", "-7"),
    ("It ended at -1,234.5 degrees", None, "-1234.5"),
    ("#### 3.75", "3.75", "3.75"),
    ("It costs $12", None, "12"),
    ("It costs $12.50.", None, "12.50"),
    ("#### $12", None, "12"),  # lm-eval's strict regex has no room for the dollar sign
    ("####12", None, "12"),  # nor for a missing space
    ("#### 12\n#### 13", "12", "13"),  # strict: first marker; flexible: last number
    ("#### \n#### 7", "7", "7"),  # an empty marker line is skipped by strict
    ("#### seven", None, None),
    ("#### seven\nI think 8", None, "8"),
    ("no digits at all", None, None),
    ("", None, None),
    ("H2O has 3 atoms", None, "3"),
    ("Drink some H2O", None, None),  # digits inside a word are not numbers
    ("step2 done", None, None),
    ("He ran 5km", None, "5"),  # units glued after the number are fine
    ("It weighs 12kg and costs 30 dollars", None, "30"),
    ("pages 10-12", None, "12"),  # a range, not minus twelve
    ("x = -5", None, "-5"),
    ("I owe -$5.", None, "-5"),
    ("1,2,3", None, "3"),  # comma-separated list, not one thousand-something
    ("Total: 1,000.", None, "1000"),
    ("#### 1,000.\nThanks!", "1000", "1000"),
    ("#### 2.5 hours is 150 minutes", "2.5", "150"),
    ("Answer: 0.5", None, "0.5"),
    ("#### ,", None, None),  # the strict regex matches ',' but it holds no digit
    ("#### -", None, None),
    ("version 1.2.3", None, "1.2"),  # the tail of a dotted string is not a new number
]


@pytest.mark.parametrize("text,strict,flexible", EXTRACTION_CASES)
def test_extract_answer(text, strict, flexible):
    assert extract_answer(text, "strict") == strict
    assert extract_answer(text, "flexible") == flexible


def test_enough_tricky_cases():
    assert len(EXTRACTION_CASES) >= 25


def test_unknown_mode():
    with pytest.raises(ValueError, match="reward.mode"):
        extract_answer("#### 1", "loose")


def test_reference_answer():
    assert reference_answer("3 + 4 = <<3+4=7>>7\n#### 7") == "7"
    assert reference_answer("Total 1,000 = <<1000=1000>>1000\n#### 1,000") == "1000"
    assert reference_answer("#### -5") == "-5"
    assert reference_answer("#### $18.") == "18"
    assert reference_answer("#### 2.25\n") == "2.25"
    with pytest.raises(ValueError, match="no '#### <answer>' line: 'The answer is 7'"):
        reference_answer("The answer is 7")
    with pytest.raises(ValueError, match="####"):
        reference_answer("#### ")


def test_is_correct_numeric_and_string():
    ref = "Half of 10 is 10 / 2 = <<10/2=5>>5\n#### 5"
    assert is_correct("#### 5.0", ref, "strict")
    assert is_correct("it is 5.00", ref, "flexible")
    assert not is_correct("it is 5", ref, "strict")
    assert not is_correct("#### 6", ref, "strict")
    assert is_correct("#### 1,000", "#### 1000", "strict")
    assert is_correct("about 1000 units", "#### 1,000", "flexible")
    assert not is_correct("#### -1000", "#### 1000", "strict")
    # a non-numeric reference compares as a string
    assert is_correct("#### 1.2.3", "#### 1.2.3", "strict")
    assert not is_correct("#### 1.2", "#### 1.2.3", "strict")


def test_strict_and_flexible_disagree():
    ref = "#### 18"
    formatted_wrong_then_fixed = "#### 16\nOops, it is 18."
    assert not is_correct(formatted_wrong_then_fixed, ref, "strict")
    assert is_correct(formatted_wrong_then_fixed, ref, "flexible")
    formatted_then_chatty = "#### 18\nThat took me 3 tries."
    assert is_correct(formatted_then_chatty, ref, "strict")
    assert not is_correct(formatted_then_chatty, ref, "flexible")


def test_score_predictions_hand_computed():
    rows = [
        {"answer": "#### 10", "response": "#### 10"},  # strict yes, flexible yes
        {"answer": "#### 10", "response": "it is 10"},  # strict no, flexible yes
        {"answer": "#### 10", "response": "#### 10\nstep 3"},  # strict yes, flexible no
        {"answer": "#### 10", "response": "#### 11"},  # neither
        {"answer": "#### 2,500", "response": "#### 2500.00"},  # both
    ]
    out = score_predictions(rows)
    assert out["task"] == "gsm8k" and out["n"] == 5
    assert out["em_strict"] == pytest.approx(3 / 5)
    assert out["em_flexible"] == pytest.approx(3 / 5)
    assert [r["correct_strict"] for r in out["results"]] == [True, False, True, False, True]
    assert [r["correct_flexible"] for r in out["results"]] == [True, True, False, False, True]
    assert out["results"][2] == {
        "index": 2, "reference": "10", "pred_strict": "10", "pred_flexible": "3",
        "correct_strict": True, "correct_flexible": False,
    }
    assert out["results"][4]["reference"] == "2500" and out["results"][4]["pred_strict"] == "2500.00"
    assert score_predictions([]) == {"task": "gsm8k", "n": 0, "em_strict": 0.0, "em_flexible": 0.0, "results": []}


def test_score_predictions_missing_field_names_row():
    rows = [{"answer": "#### 1", "response": "1"}, {"answer": "#### 2", "response": "2"}, {"answer": "#### 3"}]
    with pytest.raises(ValueError, match=r"row 2: missing field 'response'"):
        score_predictions(rows)
    with pytest.raises(ValueError, match=r"row 1: missing field 'answer'"):
        score_predictions([{"answer": "#### 1", "response": "1"}, {"response": "2"}])
    with pytest.raises(ValueError, match=r"row 0: field 'response' must be a string"):
        score_predictions([{"answer": "#### 1", "response": 1}])
    with pytest.raises(ValueError, match=r"row 0: field 'answer'"):
        score_predictions([{"answer": "no marker", "response": "1"}])


# The fixture, by hand: strict correct on rows 0, 2, 4, 5, 8; flexible correct on rows 0, 1, 3, 4, 5, 7, 8.
FIXTURE_STRICT = [True, False, True, False, True, True, False, False, True]
FIXTURE_FLEXIBLE = [True, True, False, True, True, True, False, True, True]


def test_run_task_reads_predictions_file():
    cfg = EvaluateConfig(task="gsm8k", output="unused.json", predictions=str(PREDICTIONS))
    results, markdown = run_task(cfg)
    assert results["n"] == 9
    assert [r["correct_strict"] for r in results["results"]] == FIXTURE_STRICT
    assert [r["correct_flexible"] for r in results["results"]] == FIXTURE_FLEXIBLE
    assert results["em_strict"] == pytest.approx(5 / 9)
    assert results["em_flexible"] == pytest.approx(7 / 9)
    assert "| gsm8k | 9 | 0.5556 | 0.7778 |" in markdown

    cfg.limit = 4  # rows 0-3: strict 2/4, flexible 3/4
    results, _ = run_task(cfg)
    assert (results["n"], results["em_strict"], results["em_flexible"]) == (4, 0.5, 0.75)


@pytest.mark.parametrize("text,ends", [
    ("3 + 4 = 7\n#### 7", True),
    ("3 + 4 = 7\n#### 7.\n\n", True),           # a trailing period and whitespace
    ("#### 1,000", True),
    ("3 + 4 = 7\n#### 7\nThe answer is 7.", True),  # words after it, no other number
    ("#### 7\n#### 7", True),                    # the same answer twice
    ("#### 7 apples", True),
    ("#### 7\nThen 7 + 1 = 8 apples.", False),   # goes on computing: the last number is another one
    ("#### 7\n#### 8", False),                   # two answers
    ("####7", False),                            # not the harness's format
    ("The answer is 7.", False),
    ("", False),
])
def test_answer_is_final(text, ends):
    assert answer_is_final(text) is ends


def test_exact_match_format_bonus_at_end_or_anywhere():
    from rlhf.config import RewardConfig
    from rlhf.reward.exact_match import ExactMatchReward

    meta = [{"answer": "3 + 4 = <<3+4=7>>7\n#### 7"}] * 4
    replies = ["3 + 4 = 7\n#### 7", "#### 7\nThe answer is 7, or maybe 8", "#### 8", "7"]  # 2nd: ends on 8
    at_end = ExactMatchReward(RewardConfig(mode="strict", format_bonus=0.5)).score_replies(meta, replies)
    anywhere = ExactMatchReward(RewardConfig(mode="strict", format_bonus=0.5, format_at_end=False)).score_replies(
        meta, replies)
    assert at_end.tolist() == [1.5, 1.0, 0.5, 0.0]
    assert anywhere.tolist() == [1.5, 1.5, 0.5, 0.0]
