"""The synthetic grade-school math generator: determinism, disjoint splits, correct worked answers; the rendering
synthetic_prefs builds its pairs from (draw_problem, worked_solution)."""

import hashlib
import json
import random
import re
from collections import Counter

import pytest

from rlhf.config import DatasetConfig
from rlhf.dataset.synthetic_math import (
    RL_FIELDS,
    SINGLE,
    STEPS,
    _Arithmetic,
    draw_problem,
    draw_problems,
    generate_problems,
    split_of,
    worked_solution,
)
from rlhf.task.math_grading import reference_solution
from rlhf.task.math_grading import extract_answer, reference_answer

ALL_OPS = ["add", "sub", "mul", "div"]
ANNOTATION = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")


def calc(p):
    """A problem's calculation: its operations and operands."""
    return tuple(p["ops"]), tuple(p["operands"])


def recompute(ops, operands):
    """The chain's value, computed here independently of the generator, checking its rules on the way."""
    value = operands[0]
    for op, b in zip(ops, operands[1:]):
        if op == "add":
            value = value + b
        elif op == "sub":
            assert b < value, f"{value} - {b} must stay positive"
            value = value - b
        elif op == "mul":
            value = value * b
        else:
            assert b >= 2 and value % b == 0, f"{value} / {b} must be exact"
            value = value // b
    return value


@pytest.fixture(scope="module")
def mixed():
    cfg = DatasetConfig(operations=ALL_OPS, min_steps=1, max_steps=3, num_train=600, num_test=150, seed=3)
    return cfg, generate_problems(cfg, "train", 600), generate_problems(cfg, "test", 150)


def test_deterministic_and_seeded():
    cfg = DatasetConfig(seed=7)
    a = generate_problems(cfg, "train", 40)
    assert a == generate_problems(cfg, "train", 40)
    assert generate_problems(cfg, "train", 15) == a[:15]  # the first k do not depend on n
    assert generate_problems(DatasetConfig(seed=8), "train", 40) != a
    assert len({p["question"] for p in a}) == 40


def test_splits_are_disjoint(mixed):
    cfg, train, test = mixed
    assert len(train) == 600 and len(test) == 150
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    # stronger: no calculation (operations + operands) appears in both splits
    assert not {calc(p) for p in train} & {calc(p) for p in test}
    assert all(split_of(cfg.seed, p["ops"], p["operands"]) == "test" for p in test)
    # default config, full default sizes
    d = DatasetConfig()
    big_train = {p["question"] for p in generate_problems(d, "train", d.num_train)}
    big_test = {p["question"] for p in generate_problems(d, "test", d.num_test)}
    assert len(big_train) == d.num_train and len(big_test) == d.num_test and not big_train & big_test


def test_answers_are_correct(mixed):
    _, train, test = mixed
    for p in train + test:
        assert p["num_steps"] == len(p["ops"]) == len(p["operands"]) - 1
        assert p["operation"] == ",".join(p["ops"])
        expected = recompute(p["ops"], p["operands"])
        assert p["final_answer"] == expected
        lines = p["answer"].split("\n")
        assert lines[-1] == f"#### {expected}"  # GSM8K's final line, exactly
        assert reference_answer(p["answer"]) == str(expected)
        assert extract_answer(p["answer"], "strict") == str(expected)
        assert len(lines) == p["num_steps"] + 1  # one worked line per step
        value = p["operands"][0]
        for line, op, b in zip(lines, p["ops"], p["operands"][1:]):
            (x, sym, y, z, shown), = ANNOTATION.findall(line)
            assert (int(x), sym, int(y)) == (value, {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op], b)
            value = recompute([op], [value, b])
            assert int(z) == int(shown) == value
            assert f"{x} {sym} {y} = <<{x}{sym}{y}={z}>>{z}" in line  # `3 + 4 = <<3+4=7>>7` as in GSM8K
        # every operand the problem states is in the question text
        for number in p["operands"]:
            assert re.search(rf"(?<!\d){number}(?!\d)", p["question"]), (number, p["question"])


def test_numbers_in_range_and_ops_respected(mixed):
    cfg, train, test = mixed
    for p in train + test:
        assert set(p["ops"]) <= set(cfg.operations)
        assert all(cfg.min_number <= x <= cfg.max_number for x in p["operands"])
        assert cfg.min_steps <= p["num_steps"] <= cfg.max_steps
    first_ops = Counter(p["ops"][0] for p in train)
    assert set(first_ops) == set(ALL_OPS)
    assert min(first_ops.values()) > 0.15 * len(train)  # roughly uniform over the configured operations
    assert set(Counter(p["num_steps"] for p in train)) == {1, 2, 3}


def test_single_step_default_config():
    cfg = DatasetConfig(min_number=5, max_number=9)
    for p in generate_problems(cfg, "train", 100):
        assert p["num_steps"] == 1 and p["ops"][0] in ("add", "sub", "mul")
        assert all(5 <= x <= 9 for x in p["operands"])


def _template_regex(template, anchored=True):
    parts = re.split(r"\{\w+\}", template)
    body = "[^.?]+?".join(re.escape(x) for x in parts)
    return re.compile("^" + body + "$" if anchored else body)


def test_templates_vary():
    cfg = DatasetConfig(operations=ALL_OPS, min_steps=1, max_steps=1)
    problems = generate_problems(cfg, "train", 400)
    for op in ALL_OPS:
        patterns = [_template_regex(q) for q, _ in SINGLE[op]]
        used = {i for p in problems if p["ops"] == [op] for i, pat in enumerate(patterns) if pat.match(p["question"])}
        assert len(used) >= 3, (op, used)
    names = {p["question"].split()[0] for p in problems}
    assert len(names) >= 10
    multi = generate_problems(DatasetConfig(operations=ALL_OPS, min_steps=3, max_steps=3), "train", 200)
    step_patterns = [_template_regex(s, anchored=False) for op in ALL_OPS for s, _ in STEPS[op]]
    seen = {i for p in multi for i, pat in enumerate(step_patterns) if pat.search(p["question"])}
    assert len(seen) >= 10, seen


def test_division_only_chains():
    cfg = DatasetConfig(operations=["div"], min_steps=2, max_steps=2, max_number=60)
    for p in generate_problems(cfg, "test", 30):
        assert p["ops"] == ["div", "div"]
        assert p["final_answer"] == recompute(p["ops"], p["operands"]) >= 1


def test_subtraction_never_negative():
    cfg = DatasetConfig(operations=["sub"], min_steps=1, max_steps=4, min_number=2, max_number=30)
    for p in generate_problems(cfg, "train", 200):
        recompute(p["ops"], p["operands"])  # asserts every intermediate stays positive
        assert p["final_answer"] >= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_problems(DatasetConfig(), "validation", 3)
    with pytest.raises(ValueError, match="dataset.operations"):
        generate_problems(DatasetConfig(operations=["pow"]), "train", 3)
    with pytest.raises(ValueError, match="dataset.max_steps"):
        generate_problems(DatasetConfig(min_steps=3, max_steps=2), "train", 3)
    # no exact division exists with operands in 2..3: the generator gives up with a clear message
    with pytest.raises(ValueError, match="could only generate 0 distinct train problems"):
        generate_problems(DatasetConfig(operations=["div"], min_number=2, max_number=3), "train", 2)
    assert generate_problems(DatasetConfig(), "train", 0) == []


def test_default_rl_problems_are_pinned():
    """The RL task's problems do not change by accident (e.g. when the generator is refactored or synthetic_prefs
    changes how it uses it): a digest of the first 200 train and test problems of the default config."""
    d = DatasetConfig()
    digest = {s: hashlib.sha256(json.dumps(generate_problems(d, s, 200), sort_keys=True).encode()).hexdigest()[:16]
              for s in ("train", "test")}
    assert digest == {"train": "a3763c3535172fc9", "test": "5ec8f927888991f9"}
    first = generate_problems(d, "train", 1)[0]
    assert set(first) == set(RL_FIELDS)
    assert first["answer"] == ("James collected 38 + 19 = <<38+19=57>>57 trading cards in total.\n#### 57")


def test_draw_problems_streams_share_the_split_not_the_problems():
    cfg = DatasetConfig(operations=ALL_OPS, min_steps=1, max_steps=3, seed=2)
    rl = draw_problems(cfg, "train", 80)
    assert [{k: p[k] for k in RL_FIELDS} for p in rl] == generate_problems(cfg, "train", 80)
    other = draw_problems(cfg, "train", 80, stream="synthetic_prefs")
    assert other == draw_problems(cfg, "train", 80, stream="synthetic_prefs")  # deterministic per stream
    assert draw_problems(cfg, "train", 30, stream="synthetic_prefs") == other[:30]
    assert {p["question"] for p in other} != {p["question"] for p in rl}
    test = draw_problems(cfg, "test", 80, stream="synthetic_prefs")
    assert all(split_of(cfg.seed, p["ops"], p["operands"]) == "test" for p in test)
    assert not {calc(p) for p in rl + other} & {calc(p) for p in test}


def test_worked_solution_plain_and_with_a_wrong_last_step():
    cfg = DatasetConfig(operations=ALL_OPS, min_steps=1, max_steps=3, seed=4)
    problems = draw_problems(cfg, "test", 60, stream="synthetic_prefs")
    assert {p["num_steps"] for p in problems} == {1, 2, 3}
    for p in problems:
        assert p["answer"] == worked_solution(p)
        assert p["solution"] == worked_solution(p, annotate=False) == reference_solution(p["answer"])
        assert "<<" not in p["solution"] and p["solution"].endswith(f"\n#### {p['final_answer']}")
        assert p["final_answer"] == recompute(p["ops"], p["operands"])
        r, slip = p["final_answer"], p["final_answer"] + 3
        lines, wrong = p["solution"].split("\n"), worked_solution(p, annotate=False, last_result=slip).split("\n")
        assert wrong[:-2] == lines[:-2]  # earlier steps untouched
        assert wrong[-2:] == [lines[-2].replace(f" = {r} ", f" = {slip} "), f"#### {slip}"]
        op = p["ops"][-1]
        other_op = "add" if op != "add" else "mul"
        swapped = worked_solution(p, annotate=False, last_op=other_op, last_result=0)
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
        a, b = recompute(p["ops"][:-1], p["operands"][:-1]), p["operands"][-1]
        assert f"{a} {sym[other_op]} {b} = 0" in swapped.split("\n")[-2] and swapped.endswith("#### 0")


def test_draw_problem_respects_accept_and_steps():
    arith = _Arithmetic(DatasetConfig(operations=ALL_OPS))
    rng = random.Random(0)
    assert draw_problem(rng, arith, 2, accept=lambda ops, operands: False) is None
    p = draw_problem(random.Random(1), arith, 3)
    assert p is not None and p["num_steps"] == 3 and len(p["operands"]) == 4
    assert p == draw_problem(random.Random(1), arith, 3)
