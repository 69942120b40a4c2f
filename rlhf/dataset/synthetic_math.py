"""Procedurally generated grade-school word problems with GSM8K-style worked solutions: the project's one word-problem
generator (the synthetic_math RL prompts, and the problems behind the synthetic_prefs preference pairs in prefs.py).

A problem is a chain of 1..N arithmetic steps on one quantity: a starting count, then one operation per step (add, sub,
mul, div) with an operand drawn from [min_number, max_number]. Subtraction never goes to zero or below, division is
always exact, and products are capped so that long chains stay grade-school sized. Each step is told by one of several
templates (names, objects and containers vary) and solved by one line carrying a GSM8K calculator annotation
(``Tom has 3 + 4 = <<3+4=7>>7 apples.``); the solution ends with ``#### <answer>`` like GSM8K's. ``worked_solution``
renders the same lines without annotations, or with the last step's operation or result replaced (wrong replies).

Splits: every problem's arithmetic (its operations and operands) is hashed with the seed into one of four buckets; one
bucket belongs to the test split and three to train. Train and test therefore never share a calculation, let alone a
question, and each split is a deterministic function of the config (its first k problems do not depend on n).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from rlhf.config import DatasetConfig

SPLITS = ("train", "test")
OPERATIONS = ("add", "sub", "mul", "div")
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
TEST_BUCKETS, NUM_BUCKETS = 1, 4

NAMES = [
    ("Tom", "he"), ("Maria", "she"), ("Ali", "he"), ("Sofia", "she"), ("James", "he"), ("Lena", "she"),
    ("Ravi", "he"), ("Emma", "she"), ("Kenji", "he"), ("Chloe", "she"), ("Omar", "he"), ("Grace", "she"),
    ("Lucas", "he"), ("Mei", "she"), ("Diego", "he"), ("Hannah", "she"), ("Noah", "he"), ("Aisha", "she"),
]
PRONOUNS = {"he": ("he", "him", "his", "himself"), "she": ("she", "her", "her", "herself")}
# (item, items, container, containers)
CONTEXTS = [
    ("apple", "apples", "basket", "baskets"),
    ("marble", "marbles", "jar", "jars"),
    ("sticker", "stickers", "sheet", "sheets"),
    ("pencil", "pencils", "box", "boxes"),
    ("cookie", "cookies", "tray", "trays"),
    ("seashell", "seashells", "bucket", "buckets"),
    ("trading card", "trading cards", "pack", "packs"),
    ("book", "books", "crate", "crates"),
    ("egg", "eggs", "carton", "cartons"),
    ("balloon", "balloons", "bag", "bags"),
    ("toy car", "toy cars", "shelf", "shelves"),
    ("orange", "oranges", "crate", "crates"),
]

# One-step problems: (question, solution line). {a} is the first number, {b} the second, {r} the result; {calc}
# in a solution line is the calculation, `a + b = <<a+b=r>>r` (see _calc).
SINGLE: dict[str, list[tuple[str, str]]] = {
    "add": [
        ("{name} has {a} {items}. {Pron} buys {b} more {items}. How many {items} does {name} have now?",
         "{name} has {calc} {items} now."),
        (("{name} collected {a} {items} on Monday and {b} {items} on Tuesday. How many {items} did {name} collect "
          "in total?"), "{name} collected {calc} {items} in total."),
        ("{name} has {a} {items} and {friend} gives {obj} another {b}. How many {items} does {name} have altogether?",
         "Altogether {name} has {calc} {items}."),
        (("A {container} holds {a} {items}. {name} puts {b} more {items} into it. How many {items} are in the "
          "{container} now?"), "The {container} now holds {calc} {items}."),
    ],
    "sub": [
        ("{name} has {a} {items}. {Pron} gives {b} of them to {friend}. How many {items} does {name} have left?",
         "{name} has {calc} {items} left."),
        (("There are {a} {items} in a {container}. {name} takes out {b} {items}. How many {items} remain in the "
          "{container}?"), "The {container} has {calc} {items} left in it."),
        ("{name} had {a} {items} but lost {b} of them. How many {items} does {name} have now?",
         "{name} has {calc} {items} now."),
        ("{name} wants to collect {a} {items} and already has {b}. How many more {items} does {pron} need?",
         "{Pron} needs {calc} more {items}."),
    ],
    "mul": [
        (("{name} buys {a} {containers} of {items}. Each {container} has {b} {items}. How many {items} does {name} "
          "buy?"), "{name} buys {calc} {items}."),
        ("There are {a} {containers} with {b} {items} in each. How many {items} are there in total?",
         "There are {calc} {items} in total."),
        (("{name} has {a} {items}. {friend} has {b} times as many {items} as {name}. How many {items} does {friend} "
          "have?"), "{friend} has {calc} {items}."),
        ("{name} collects {a} {items} every day for {b} days. How many {items} does {pron} collect?",
         "{Pron} collects {calc} {items}."),
    ],
    "div": [
        ("{name} has {a} {items} and shares them equally among {b} friends. How many {items} does each friend get?",
         "Each friend gets {calc} {items}."),
        (("{name} packs {a} {items} into {b} {containers}, the same number in each. How many {items} are in each "
          "{container}?"), "Each {container} has {calc} {items}."),
        ("{a} {items} are split evenly between {b} {containers}. How many {items} go into each {container}?",
         "Each {container} gets {calc} {items}."),
        ("{name} arranges {a} {items} in {b} equal rows. How many {items} are in each row?",
         "Each row has {calc} {items}."),
    ],
}

# Multi-step problems: an opening sentence, one (sentence, solution line) per step on the running count {a}, a question.
OPENINGS = [
    "{name} has {a} {items}.",
    "{name} starts the week with {a} {items}.",
    "At first, {name} owns {a} {items}.",
]
STEPS: dict[str, list[tuple[str, str]]] = {
    "add": [
        ("{Pron} buys {b} more {items}.", "After buying more, {pron} has {calc} {items}."),
        ("Then {friend} gives {obj} {b} {items}.", "With the gift, {pron} has {calc} {items}."),
        ("Later, {pron} finds another {b} {items}.", "{Pron} then has {calc} {items}."),
    ],
    "sub": [
        ("{Pron} gives {b} {items} to {friend}.",
         "After giving some away, {pron} has {calc} {items}."),
        ("{Pron} sells {b} {items} at a yard sale.",
         "After the sale, {pron} has {calc} {items}."),
        ("Then {pron} loses {b} {items}.", "{Pron} is left with {calc} {items}."),
    ],
    "mul": [
        ("Over the next month, {pos} collection grows to {b} times its size.",
         "The collection grows to {calc} {items}."),
        ("Then {pron} trades with friends until {pron} has {b} times as many {items} as before.",
         "After trading, {pron} has {calc} {items}."),
        ("{friend} adds enough {items} to make {b} times what {name} had.",
         "Now {name} has {calc} {items}."),
    ],
    "div": [
        ("{Pron} splits the {items} equally into {b} {containers} and keeps only one {container}.",
         "One {container} holds {calc} {items}."),
        ("{Pron} shares the {items} equally among {b} people, {refl} included, and keeps {pos} share.",
         "{Pos} share is {calc} {items}."),
        ("{Pron} divides the {items} into {b} equal piles and gives away every pile but one.",
         "One pile has {calc} {items}."),
    ],
}
QUESTIONS = [
    "How many {items} does {name} have now?",
    "How many {items} does {name} end up with?",
    "How many {items} does {name} have at the end?",
]


class _Arithmetic:
    """Which operands are allowed for each operation given the running count, under one DatasetConfig."""

    def __init__(self, cfg: DatasetConfig):
        ops = list(cfg.operations)
        unknown = sorted(set(ops) - set(OPERATIONS))
        if unknown or not ops:
            raise ValueError(f"dataset.operations: unknown {unknown}; allowed {list(OPERATIONS)}")
        if cfg.min_steps < 1 or cfg.max_steps < cfg.min_steps:
            raise ValueError(f"dataset.max_steps: need 1 <= min_steps <= max_steps, got {cfg.min_steps}..{cfg.max_steps}")
        if cfg.min_number < 0 or cfg.max_number <= cfg.min_number:
            raise ValueError(f"dataset.max_number: need 0 <= min_number < max_number, got "
                             f"{cfg.min_number}..{cfg.max_number}")
        self.ops = list(dict.fromkeys(ops))
        self.hi = cfg.max_number
        self.lo = max(cfg.min_number, 1)  # a count of zero makes no story, a divisor of zero no sense
        self.lo_factor = max(self.lo, 2) if self.hi >= 2 else self.lo  # x1 and /1 are not steps
        self.cap = max(self.hi * self.hi, 100)  # largest product a chain may reach
        self._starts: dict[str, list[int]] = {}

    def operands(self, op: str, a: int) -> Sequence[int]:
        if op == "add":
            return range(self.lo, self.hi + 1)
        if op == "sub":
            return range(self.lo, min(self.hi, a - 1) + 1)
        if op == "mul":
            return range(self.lo_factor, min(self.hi, self.cap // max(a, 1)) + 1)
        return _divisors(a, self.lo_factor, min(self.hi, a - 1))

    def starts(self, op: str) -> list[int]:
        if op not in self._starts:
            self._starts[op] = [a for a in range(self.lo, self.hi + 1) if len(self.operands(op, a)) > 0]
        return self._starts[op]


def _divisors(a: int, lo: int, hi: int) -> list[int]:
    found = set()
    for d in range(1, math.isqrt(a) + 1):
        if a % d == 0:
            found.update((d, a // d))
    return sorted(d for d in found if lo <= d <= hi)


def apply(op: str, a: int, b: int) -> int:
    """The result of one step; raises if the step breaks the generator's rules."""
    if op == "add":
        return a + b
    if op == "sub":
        if b >= a:
            raise ValueError(f"sub {a} - {b} would not stay positive")
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        if b <= 0 or a % b:
            raise ValueError(f"div {a} / {b} is not exact")
        return a // b
    raise ValueError(f"unknown operation {op!r}")


def _draw_chain(rng: random.Random, arith: _Arithmetic, num_steps: int) -> tuple[list[str], list[int]] | None:
    first = rng.choice(arith.ops)
    starts = arith.starts(first)
    if not starts:
        return None
    a = rng.choice(starts)
    ops, operands = [], [a]
    for i in range(num_steps):
        op = first if i == 0 else None
        if op is None:
            feasible = [o for o in arith.ops if len(arith.operands(o, a)) > 0]
            if not feasible:
                return None
            op = rng.choice(feasible)
        b = rng.choice(arith.operands(op, a))
        ops.append(op)
        operands.append(b)
        a = apply(op, a, b)
    return ops, operands


def _words(rng: random.Random) -> dict[str, str]:
    (name, gender), (friend, _) = rng.sample(NAMES, 2)
    pron, obj, pos, refl = PRONOUNS[gender]
    item, items, container, containers = rng.choice(CONTEXTS)
    return {"name": name, "friend": friend, "pron": pron, "Pron": pron.capitalize(), "obj": obj, "pos": pos,
            "Pos": pos.capitalize(), "refl": refl, "item": item, "items": items, "container": container,
            "containers": containers}


def _calc(op: str, a: int, b: int, r: int, annotate: bool) -> str:
    sym = SYMBOL[op]
    return f"{a} {sym} {b} = <<{a}{sym}{b}={r}>>{r}" if annotate else f"{a} {sym} {b} = {r}"


def _render(rng: random.Random, ops: list[str], operands: list[int]) -> tuple[str, dict[str, str], list[tuple]]:
    """(question, words, steps): one (solution line template, op, a, b, r) per step, rendered by worked_solution."""
    words = _words(rng)
    if len(ops) == 1:
        a, b = operands
        question, line = rng.choice(SINGLE[ops[0]])
        return question.format(**words, a=a, b=b), words, [(line, ops[0], a, b, apply(ops[0], a, b))]
    sentences = [rng.choice(OPENINGS).format(**words, a=operands[0])]
    steps = []
    used = set()
    a = operands[0]
    for op, b in zip(ops, operands[1:]):
        r = apply(op, a, b)
        fresh = [t for t in STEPS[op] if t not in used] or STEPS[op]  # avoid telling the same sentence twice
        sentence, line = rng.choice(fresh)
        used.add((sentence, line))
        sentences.append(sentence.format(**words, a=a, b=b, r=r))
        steps.append((line, op, a, b, r))
        a = r
    sentences.append(rng.choice(QUESTIONS).format(**words))
    return " ".join(sentences), words, steps


def worked_solution(problem: dict[str, Any], annotate: bool = True, last_op: str | None = None,
                    last_result: int | None = None) -> str:
    """One solution line per step and a final ``#### N`` line.

    annotate: GSM8K calculator annotations (``3 + 4 = <<3+4=7>>7``, the ``answer`` field) or plain (``3 + 4 = 7``, the
    ``solution`` field). last_op / last_result replace the operation shown in the last step and the result it reaches
    (and so the final answer): a wrong operation or an arithmetic slip told in the problem's own words.
    """
    steps = problem["steps"]
    lines = []
    for i, (line, op, a, b, r) in enumerate(steps):
        if i == len(steps) - 1:
            op = last_op or op
            r = r if last_result is None else last_result
        lines.append(line.format(**problem["words"], a=a, b=b, r=r, calc=_calc(op, a, b, r, annotate)))
    return "\n".join(lines + [f"#### {r}"])


def _bucket(seed: int, ops: list[str], operands: list[int]) -> int:
    key = f"{seed}|{','.join(ops)}|{','.join(map(str, operands))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % NUM_BUCKETS


def split_of(seed: int, ops: list[str], operands: list[int]) -> str:
    """The split a calculation belongs to (both splits use this, which makes them disjoint)."""
    return "test" if _bucket(seed, ops, operands) < TEST_BUCKETS else "train"


def draw_problem(rng: random.Random, arith: _Arithmetic, num_steps: int,
                 accept: Callable[[list[str], list[int]], bool] | None = None) -> dict[str, Any] | None:
    """One problem of num_steps steps drawn with rng, or None when no chain fits or accept(ops, operands) refuses it.

    Keys: question, answer (GSM8K, annotated), solution (the same worked solution, plain), operation (op names joined
    by ","), num_steps, ops, operands (the starting count, then one operand per step), final_answer, and words and
    steps (what worked_solution renders from). The question is rendered only once the calculation is accepted, so a
    refused draw uses less of rng.
    """
    chain = _draw_chain(rng, arith, num_steps)
    if chain is None:
        return None
    ops, operands = chain
    if accept is not None and not accept(ops, operands):
        return None
    question, words, steps = _render(rng, ops, operands)
    problem = {"question": question, "operation": ",".join(ops), "num_steps": len(ops), "ops": ops,
               "operands": operands, "final_answer": steps[-1][-1], "words": words, "steps": steps}
    problem["answer"] = worked_solution(problem)
    problem["solution"] = worked_solution(problem, annotate=False)
    return problem


def draw_problems(cfg: DatasetConfig, split: str, n: int, stream: str = "synthetic_math") -> list[dict[str, Any]]:
    """n distinct problems (draw_problem's dicts) of ``split`` ("train" | "test"), deterministic for (stream, cfg.seed).

    Each problem has cfg.min_steps..cfg.max_steps steps. Another stream draws other problems under the same rules and
    the same split of calculations (split_of), so the test calculations of every stream are held out from all trains.
    """
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {list(SPLITS)}")
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    arith = _Arithmetic(cfg)
    rng = random.Random(f"{stream}|{cfg.seed}|{split}")

    def in_split(ops: list[str], operands: list[int]) -> bool:
        return split_of(cfg.seed, ops, operands) == split

    problems: list[dict[str, Any]] = []
    seen = set()
    budget = 200 * n + 1000
    for _ in range(budget):
        if len(problems) == n:
            break
        p = draw_problem(rng, arith, rng.randint(cfg.min_steps, cfg.max_steps), accept=in_split)
        if p is None or p["question"] in seen:
            continue
        seen.add(p["question"])
        problems.append(p)
    if len(problems) < n:
        raise ValueError(
            f"dataset.num_{split}: could only generate {len(problems)} distinct {split} problems of {n} requested; "
            f"widen dataset.min_number..max_number ({cfg.min_number}..{cfg.max_number}) or add dataset.operations"
        )
    return problems


RL_FIELDS = ("question", "answer", "operation", "num_steps", "ops", "operands", "final_answer")


def generate_problems(cfg: DatasetConfig, split: str, n: int) -> list[dict]:
    """n distinct synthetic_math problems of ``split`` ("train" | "test"), deterministic for cfg.seed.

    Each dict has question, answer (GSM8K format), operation (op names joined by ","), num_steps, ops, operands (the
    starting count followed by one operand per step), final_answer.
    """
    return [{k: p[k] for k in RL_FIELDS} for p in draw_problems(cfg, split, n)]
