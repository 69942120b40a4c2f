"""The synthetic grade-school math generator: determinism, disjoint splits, correct worked answers."""

import re
from collections import Counter

import pytest

from rlhf.config import DatasetConfig
from rlhf.dataset.synthetic_math import SINGLE, STEPS, generate_problems, split_of
from rlhf.task.math_grading import extract_answer, reference_answer

ALL_OPS = ["add", "sub", "mul", "div"]
ANNOTATION = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")


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
    calc = lambda p: (tuple(p["ops"]), tuple(p["operands"]))  # noqa: E731
    assert not {calc(p) for p in train} & {calc(p) for p in test}
    assert all(split_of(cfg.seed, p["ops"], p["operands"]) == "test" for p in test)
    # default config, full default sizes
    d = DatasetConfig()
    big_train = {p["question"] for p in generate_problems(d, "train", d.num_train)}
    big_test = {p["question"] for p in generate_problems(d, "test", d.num_test)}
    assert len(big_train) == d.num_train and len(big_test) == d.num_test and not big_train & big_test


def test_answers_are_correct(mixed):
    cfg, train, test = mixed
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
