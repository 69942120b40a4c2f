"""Preference pairs: ``load_pref_split(cfg, split)`` -> datasets.Dataset(prompt, chosen, rejected, subset[, rationale]).

Sources (``dataset.name``):
  synthetic_prefs  embedded, built offline from generated arithmetic word problems: a correct worked solution versus
                   an arithmetic slip, a wrong operation, an evasive refusal, a padded verbose wrong answer, a reply
                   in the wrong format and a correct solution of a different problem. Subsets map onto RewardBench
                   sections (rlhf/eval/rewardbench.py SYNTHETIC_SECTIONS). Seeded; train/test problems disjoint.
  synthetic_chat   embedded everyday assistant requests: a concrete reference reply versus a refusal, an off-topic,
                   curt or dismissive reply, or an answer about another topic (rlhf/dataset/synthetic_chat.py).
  hh_rlhf          Anthropic/hh-rlhf: chosen/rejected are full "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts; the
                   shared prompt (up to the last common "Assistant:" turn) is split off.
  rewardbench      allenai/reward-bench, split "filtered" (prompt, chosen, rejected, subset).
  hh_rationales    local JSONL/hub rows with prompt, chosen, rejected, rationale.
``dataset.path`` (jsonl/json/parquet; "{split}" in it is replaced by the split name) takes precedence over
``dataset.hub_id``. Every row is validated: a missing or empty field fails with
"dataset <name> row <i>: missing field '<f>'" (i counts from 0 in the source order).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import datasets

from rlhf.config import DatasetConfig
from rlhf.dataset.math_data import judge_prompt
from rlhf.dataset.synthetic_chat import synthetic_chat_rows
from rlhf.report.io import read_jsonl

PREF_DATASETS = ("synthetic_prefs", "synthetic_chat", "hh_rlhf", "rewardbench", "hh_rationales")
ASSISTANT_MARK = "\n\nAssistant:"
HUMAN_MARK = "\n\nHuman:"

TEST_POOL = 1000
SYNTH_SUBSETS = ("synth-slip", "synth-wrong-op", "synth-refusal", "synth-verbose", "synth-format", "synth-offtopic")

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam", "Maya",
          "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "shells", "cards", "stamps",
          "beads", "tickets"]
_REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I would rather not solve homework problems. Please ask your teacher for help.",
    "As an AI assistant, I cannot provide answers to math questions like this one.",
    "This question is outside what I can help with. Try a calculator instead.",
    "I don't feel comfortable answering this. Maybe you can work it out yourself?",
]
_PADDING = [
    "Great question! Math problems like this one deserve careful, thorough and complete attention.",
    "Let us think about every detail of the situation very carefully, one step at a time, before answering.",
    "It is always important to read the problem twice and to keep track of all of the quantities involved.",
    "Arithmetic is the foundation of mathematics, and being careful with it pays off in the long run.",
    "I hope this detailed and comprehensive explanation is helpful to you and makes everything clear!",
]


# -------------------------------------------------------------------------------------------- synthetic word problems
def make_problem(rng: random.Random, lo: int = 2, hi: int = 50) -> Dict[str, Any]:
    """One single-operation word problem: question, op, a, b, result, GSM8K-style answer and a worked solution."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    op = rng.choice(["add", "sub", "mul"])
    if op == "add":
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more {item}. How many {item} does {name} have now?"
        lead = f"{name} starts with {a} {item} and gets {b} more, so"
        step, res = f"{a} + {b}", a + b
    elif op == "sub":
        a = rng.randint(lo + 1, hi)
        b = rng.randint(lo, a - 1) if a - 1 >= lo else lo
        a = max(a, b + 1)
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"
        lead = f"{name} starts with {a} {item} and gives away {b}, so"
        step, res = f"{a} - {b}", a - b
    else:
        a, b = rng.randint(2, 12), rng.randint(lo, hi)
        q = f"{name} buys {a} bags of {item}. Each bag holds {b} {item}. How many {item} does {name} buy in total?"
        lead = f"{name} buys {a} bags with {b} {item} in each, so"
        step, res = f"{a} * {b}", a * b
    return {
        "question": q, "op": op, "a": a, "b": b, "result": res, "lead": lead,
        "answer": f"{step} = <<{step.replace(' ', '')}={res}>>{res}\n#### {res}",
        "solution": f"{lead} {step} = {res}.\n#### {res}",
    }


def _wrong_op_result(p: Dict[str, Any]) -> int:
    a, b, res = p["a"], p["b"], p["result"]
    for cand in {"add": (a - b, a * b), "sub": (a + b, a * b), "mul": (a + b, a * max(b - 1, 1))}[p["op"]]:
        if cand != res and cand >= 0:
            return cand
    return res + 1


_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_WRONG_SYMBOL = {"add": "-", "sub": "+", "mul": "+"}


def _slip(rng: random.Random, res: int) -> int:
    for _ in range(10):
        cand = res + rng.choice([-10, -2, -1, 1, 2, 10])
        if cand >= 0 and cand != res:
            return cand
    return res + 1


def make_pair(rng: random.Random, p: Dict[str, Any], subset: str, other: Dict[str, Any]) -> Tuple[str, str]:
    """(chosen, rejected) for one problem and subset; ``other`` is a different problem (for synth-offtopic)."""
    a, b, res, sym, lead = p["a"], p["b"], p["result"], _SYMBOL[p["op"]], p["lead"]
    chosen = p["solution"]
    if subset == "synth-slip":
        wrong = _slip(rng, res)
        rejected = f"{lead} {a} {sym} {b} = {wrong}.\n#### {wrong}"
    elif subset == "synth-wrong-op":
        wrong = _wrong_op_result(p)
        wsym = _WRONG_SYMBOL[p["op"]] if wrong in (a + b, a - b) else sym
        rejected = f"{lead} {a} {wsym} {b} = {wrong}.\n#### {wrong}"
    elif subset == "synth-refusal":
        rejected = rng.choice(_REFUSALS)
    elif subset == "synth-verbose":
        wrong = _slip(rng, res)
        pad = rng.sample(_PADDING[:-1], 3)
        rejected = (f"{pad[0]} {pad[1]} The question says: {p['question']} {pad[2]} "
                    f"So we compute {a} {sym} {b}, which gives {wrong}. {_PADDING[-1]}\n#### {wrong}")
    elif subset == "synth-format":
        rejected = rng.choice([f"{lead} {a} {sym} {b} = {res}. The answer is {res}.", f"The answer is {res}",
                               f"Answer: {res} (because {a} {sym} {b} = {res})"])
    elif subset == "synth-offtopic":
        rejected = other["solution"]
    else:
        raise ValueError(f"synthetic_prefs: unknown subset {subset!r}")
    return chosen, rejected


def _unique_problems(rng: random.Random, n: int, exclude: set, lo: int, hi: int) -> List[Dict[str, Any]]:
    out, seen = [], set(exclude)
    tries = 0
    while len(out) < n:
        p = make_problem(rng, lo, hi)
        tries += 1
        if p["question"] in seen:
            if tries > 50 * n + 1000:
                raise ValueError(f"synthetic_prefs: cannot draw {n} distinct problems from numbers {lo}..{hi}")
            continue
        seen.add(p["question"])
        out.append(p)
    return out


def synthetic_rows(cfg: DatasetConfig, split: str) -> List[Dict[str, Any]]:
    """Rows of synthetic_prefs; subsets cycle so every subset gets ~n/6 pairs. Test problems never appear in train."""
    lo, hi = cfg.min_number, cfg.max_number
    # the test pool is drawn at a fixed size so train excludes it whatever num_test is (up to TEST_POOL)
    test = _unique_problems(random.Random(cfg.seed * 1009 + 1), max(cfg.num_test, TEST_POOL), set(), lo, hi)
    if split == "test":
        problems, rng = test[:cfg.num_test], random.Random(cfg.seed * 1009 + 11)
    elif split == "train":
        problems = _unique_problems(random.Random(cfg.seed * 1009 + 2), cfg.num_train,
                                    {p["question"] for p in test}, lo, hi)
        rng = random.Random(cfg.seed * 1009 + 12)
    else:
        raise ValueError(f"dataset synthetic_prefs: unknown split {split!r} (train | test)")
    rows = []
    for i, p in enumerate(problems):
        subset = SYNTH_SUBSETS[i % len(SYNTH_SUBSETS)]
        other = next((q for q in problems[i + 1:] + problems[:i] if q["solution"] != p["solution"]), None)
        other = other or make_problem(rng, lo, hi + 1)
        chosen, rejected = make_pair(rng, p, subset, other)
        rows.append({"prompt": judge_prompt(p["question"], cfg.system_prompt), "chosen": chosen, "rejected": rejected,
                     "subset": subset, "question": p["question"], "answer": p["answer"]})
    return rows


# ------------------------------------------------------------------------------------------------------ hh-rlhf split
def split_hh_transcript(chosen: str, rejected: str) -> Tuple[str, str, str]:
    """Full chosen/rejected transcripts -> (shared prompt, chosen reply, rejected reply).

    The prompt is everything before the last "\\n\\nAssistant:" that both transcripts share (kept in the
    "Human: ... Assistant: ..." form, stripped); the replies are what follows that marker.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    idx = common.rfind(ASSISTANT_MARK)
    if idx < 0:
        raise ValueError("no shared '\\n\\nAssistant:' turn")
    end = idx + len(ASSISTANT_MARK)
    prompt = chosen[:idx].strip()
    return prompt, chosen[end:].strip(), rejected[end:].strip()


# -------------------------------------------------------------------------------------------------------------- input
def _read_local(path: str) -> List[Dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset.path: {path} does not exist")
    if p.suffix == ".parquet":
        return list(datasets.Dataset.from_parquet(str(p)))
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        if isinstance(data, dict):  # {"rows": [...]} or column-oriented dicts are not supported
            data = data.get("rows", data.get("data"))
        if not isinstance(data, list):
            raise ValueError(f"dataset.path: {path} must hold a JSON list of rows")
        return data
    return read_jsonl(p, "dataset.path")


def _read_source(cfg: DatasetConfig, split: str) -> List[Dict[str, Any]]:
    if cfg.path:
        return _read_local(cfg.path.replace("{split}", split))
    if not cfg.hub_id:
        raise ValueError(f"dataset {cfg.name}: set dataset.path (local file) or dataset.hub_id")
    if cfg.name == "hh_rlhf":
        ds = datasets.load_dataset(cfg.hub_id, data_dir=cfg.hub_config, split=split)
    elif cfg.name == "rewardbench":
        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split="filtered" if split in ("test", "train") else split)
    else:
        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)
    return list(ds)


def validate_rows(name: str, rows: Sequence[Dict[str, Any]], fields: Sequence[str]) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"dataset {name} row {i}: expected an object, got {type(row).__name__}")
        for f in fields:
            v = row.get(f)
            if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, dict)) and not v):
                raise ValueError(f"dataset {name} row {i}: missing field '{f}'")


def _message_text(v: Any) -> str:
    """A prompt given as a list of chat messages -> plain transcript text; strings pass through."""
    if isinstance(v, list):
        return "\n\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in v)
    return str(v)


def pref_rows(cfg: DatasetConfig, split: str) -> List[Dict[str, Any]]:
    """Validated rows as plain dicts (prompt, chosen, rejected, subset[, rationale]); no row cap applied."""
    name = cfg.name
    if name == "synthetic_prefs":
        return synthetic_rows(cfg, split)
    if name == "synthetic_chat":
        return synthetic_chat_rows(cfg, split)
    if name not in PREF_DATASETS:
        raise ValueError(f"dataset.name: {name!r} is not a preference dataset ({', '.join(PREF_DATASETS)})")
    raw = _read_source(cfg, split)
    out: List[Dict[str, Any]] = []
    if name == "hh_rlhf":
        validate_rows(name, raw, ("chosen", "rejected"))
        for i, r in enumerate(raw):
            try:
                prompt, chosen, rejected = split_hh_transcript(r["chosen"], r["rejected"])
            except ValueError as e:
                raise ValueError(f"dataset {name} row {i}: {e}") from None
            for f, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
                if not v:
                    raise ValueError(f"dataset {name} row {i}: missing field '{f}'")
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                        "subset": r.get("subset") or "hh_rlhf"})
        return out
    fields = ("prompt", "chosen", "rejected") + (("subset",) if name == "rewardbench" else ())
    fields += ("rationale",) if name == "hh_rationales" else ()
    validate_rows(name, raw, fields)
    for r in raw:
        row = {"prompt": _message_text(r["prompt"]), "chosen": str(r["chosen"]), "rejected": str(r["rejected"]),
               "subset": str(r.get("subset") or name)}
        if r.get("rationale"):
            row["rationale"] = str(r["rationale"])
        out.append(row)
    return out


def load_pref_split(cfg: DatasetConfig, split: str):
    """datasets.Dataset with prompt, chosen, rejected, subset (+ rationale when the source has it).

    At most dataset.num_train (split "train") or dataset.num_test rows (any other split) are kept, in source order.
    """
    rows = pref_rows(cfg, split)
    cap = cfg.num_train if split == "train" else cfg.num_test
    rows = rows[:cap] if cap and cap > 0 else rows
    columns = ["prompt", "chosen", "rejected", "subset"]
    if any("rationale" in r for r in rows):
        columns.append("rationale")
    return datasets.Dataset.from_dict({c: [r.get(c, "") for r in rows] for c in columns})


def demo_pool_rows(cfg: DatasetConfig, n: int = 48) -> List[Dict[str, Any]]:
    """Candidate in-context demonstrations: the first n train pairs of the dataset (never test problems)."""
    if cfg.name == "synthetic_prefs":
        return synthetic_rows(replace(cfg, num_train=n), "train")
    return pref_rows(cfg, "train")[:n]
