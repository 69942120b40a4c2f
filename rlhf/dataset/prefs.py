"""Preference pairs: ``load_pref_split(cfg, split)`` -> datasets.Dataset(prompt, chosen, rejected, subset[, rationale]).

Sources (``dataset.name``):
  synthetic_prefs  embedded, built offline from synthetic_math word problems (one step by default): a correct worked
                   solution versus an arithmetic slip, a wrong operation, an evasive refusal, a padded verbose wrong
                   answer, a reply in the wrong format and a correct solution of a different problem. Subsets map onto
                   RewardBench sections (rlhf/eval/rewardbench.py SYNTHETIC_SECTIONS). Every row carries a reference
                   rationale (why the chosen reply is better, HH-Rationales style). Seeded; train and test never
                   share a calculation.
  synthetic_chat   embedded everyday assistant requests: a concrete reference reply versus a refusal, an off-topic,
                   curt or dismissive reply, or an answer about another topic (rlhf/dataset/synthetic_chat.py).
  hh_rlhf          Anthropic/hh-rlhf: chosen/rejected are full "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts; the
                   shared prompt (up to the last common "Assistant:" turn) is split off.
  rewardbench      allenai/reward-bench, split "filtered" (prompt, chosen, rejected, subset).
  hh_rationales    local JSONL/hub rows with prompt, chosen, rejected, rationale.
``dataset.path`` (jsonl/json/parquet; "{split}" in it is replaced by the split name) takes precedence over
``dataset.hub_id``. Every row is validated: a missing or empty field fails with
"dataset <name> row <i>: missing field '<f>'" (i counts from 0 in the source order). Local / hub rows may carry an
optional ``rubric`` (one-line JSON, the judge.rubric format): a judge scores that row with it instead of judge.rubric;
an invalid one fails as "dataset <name> row <i>: rubric: ...".
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets

from rlhf.config import DatasetConfig
from rlhf.dataset.math_data import judge_prompt
from rlhf.dataset.rubric import row_rubric
from rlhf.dataset.synthetic_chat import synthetic_chat_rows
from rlhf.dataset.synthetic_math import SPLITS, SYMBOL, draw_problems, worked_solution
from rlhf.dataset.table import dataset_from_columns
from rlhf.report.io import read_jsonl

PREF_DATASETS = ("synthetic_prefs", "synthetic_chat", "hh_rlhf", "rewardbench", "hh_rationales")
ASSISTANT_MARK = "\n\nAssistant:"
HUMAN_MARK = "\n\nHuman:"

SYNTH_SUBSETS = ("synth-slip", "synth-wrong-op", "synth-refusal", "synth-verbose", "synth-format", "synth-offtopic")

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
# the operations a wrong-operation reply tries instead of the right one, in order
_WRONG_OPS = {"add": ("sub", "mul"), "sub": ("add", "mul"), "mul": ("add", "sub"), "div": ("mul", "sub")}
_AHEAD = 8  # problems drawn beyond the rows, to answer off-topic with


# -------------------------------------------------------------------------------------------- synthetic word problems
# The problems are synthetic_math's (rlhf/dataset/synthetic_math.py, drawn from their own "synthetic_prefs" stream under
# dataset.operations / min_steps..max_steps / min_number..max_number); a pair's chosen reply is the problem's plain
# worked solution, and the wrong replies are told in the same words.
def _last_step(p: dict[str, Any]) -> tuple[str, int, int, int]:
    """(op, a, b, result) of the problem's last step."""
    _, op, a, b, r = p["steps"][-1]
    return op, a, b, r


def _wrong_op_result(p: dict[str, Any]) -> tuple[str, int]:
    """(operation, result) of the last step done with another operation; (same op, result + 1) if none fits."""
    op, a, b, res = _last_step(p)
    for wop in _WRONG_OPS[op]:
        cand = {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b if b and a % b == 0 else -1}[wop]
        if cand != res and cand >= 0:
            return wop, cand
    return op, res + 1


def _slip(rng: random.Random, res: int) -> int:
    for _ in range(10):
        cand = res + rng.choice([-10, -2, -1, 1, 2, 10])
        if cand >= 0 and cand != res:
            return cand
    return res + 1


def make_pair(rng: random.Random, p: dict[str, Any], subset: str,
              other: dict[str, Any]) -> tuple[str, str, str]:
    """(chosen, rejected, rationale) for one problem (synthetic_math.draw_problem's dict) and subset; ``other`` is a
    different problem (for synth-offtopic). chosen is the plain worked solution, ending in ``#### <result>``; the
    rationale says why it is the better reply, in the HH-Rationales style (a reference for judge explanations)."""
    op, a, b, res = _last_step(p)
    sym = SYMBOL[op]
    chosen = p["solution"]
    if subset == "synth-slip":
        wrong = _slip(rng, res)
        rejected = worked_solution(p, annotate=False, last_result=wrong)
        why = f"The better reply computes {a} {sym} {b} = {res} correctly; the other slips and gets {wrong}."
    elif subset == "synth-wrong-op":
        wop, wrong = _wrong_op_result(p)
        rejected = worked_solution(p, annotate=False, last_op=wop, last_result=wrong)
        why = (f"The better reply uses the operation the problem asks for ({a} {sym} {b} = {res}); the other uses "
               f"{SYMBOL[wop]} instead and gets {wrong}.")
    elif subset == "synth-refusal":
        rejected = rng.choice(_REFUSALS)
        why = f"The better reply solves the problem and answers {res}; the other refuses a harmless math question."
    elif subset == "synth-verbose":
        wrong = _slip(rng, res)
        pad = rng.sample(_PADDING[:-1], 3)
        rejected = (f"{pad[0]} {pad[1]} The question says: {p['question']} {pad[2]} "
                    f"So we compute {a} {sym} {b}, which gives {wrong}. {_PADDING[-1]}\n#### {wrong}")
        why = f"The better reply is concise and correct ({res}); the other pads its answer with filler and gets {wrong}."
    elif subset == "synth-format":
        worked = " ".join(chosen.split("\n")[:-1])  # the solution without its "#### N" line
        rejected = rng.choice([f"{worked} The answer is {res}.", f"The answer is {res}",
                               f"Answer: {res} (because {a} {sym} {b} = {res})"])
        why = f"Both reach {res}, but only the better reply ends with the requested '#### {res}' line."
    elif subset == "synth-offtopic":
        rejected = other["solution"]
        why = f"The better reply answers this question ({res}); the other solves a different problem."
    else:
        raise ValueError(f"synthetic_prefs: unknown subset {subset!r}")
    return chosen, rejected, why


def synthetic_rows(cfg: DatasetConfig, split: str) -> list[dict[str, Any]]:
    """Rows of synthetic_prefs; subsets cycle so every subset gets ~n/6 pairs.

    Train and test never share a calculation (synthetic_math.split_of), and the first k rows of a split do not depend
    on num_train / num_test.
    """
    if split not in SPLITS:
        raise ValueError(f"dataset synthetic_prefs: unknown split {split!r} (train | test)")
    n = cfg.num_train if split == "train" else cfg.num_test
    # a few problems more than rows: the off-topic reply of row i answers one of the next _AHEAD problems (the first
    # with another result), so every row has one and the first k rows do not depend on n
    problems = draw_problems(cfg, split, n + _AHEAD, stream="synthetic_prefs")
    rng = random.Random(f"synthetic_prefs|{cfg.seed}|{split}|pairs")
    rows = []
    for i, p in enumerate(problems[:n]):
        subset = SYNTH_SUBSETS[i % len(SYNTH_SUBSETS)]
        ahead = problems[i + 1:i + 1 + _AHEAD]
        other = next((q for q in ahead if q["final_answer"] != p["final_answer"]), ahead[0])
        chosen, rejected, why = make_pair(rng, p, subset, other)
        rows.append({"prompt": judge_prompt(p["question"], cfg.system_prompt), "chosen": chosen, "rejected": rejected,
                     "subset": subset, "question": p["question"], "answer": p["answer"], "rationale": why})
    return rows


# ------------------------------------------------------------------------------------------------------ hh-rlhf split
def split_hh_transcript(chosen: str, rejected: str) -> tuple[str, str, str]:
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
def _read_local(path: str) -> list[dict[str, Any]]:
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


def _read_source(cfg: DatasetConfig, split: str) -> list[dict[str, Any]]:
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


def validate_rows(name: str, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"dataset {name} row {i}: expected an object, got {type(row).__name__}")  # noqa: TRY004
        for f in fields:
            v = row.get(f)
            if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, dict)) and not v):
                raise ValueError(f"dataset {name} row {i}: missing field '{f}'")


def _message_text(v: Any) -> str:
    """A prompt given as a list of chat messages -> plain transcript text; strings pass through."""
    if isinstance(v, list):
        return "\n\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in v)
    return str(v)


def with_rubric(row: dict[str, Any], raw: dict[str, Any], name: str, i: int) -> dict[str, Any]:
    """row plus the source row's optional per-row judge rubric (checked; a bad one fails naming row i)."""
    rubric = row_rubric(raw.get("rubric"), f"dataset {name} row {i}: rubric")
    return row if rubric is None else {**row, "rubric": rubric}


def pref_rows(cfg: DatasetConfig, split: str) -> list[dict[str, Any]]:
    """Validated rows as plain dicts (prompt, chosen, rejected, subset[, rationale][, rubric]); no row cap applied."""
    name = cfg.name
    if name == "synthetic_prefs":
        return synthetic_rows(cfg, split)
    if name == "synthetic_chat":
        return synthetic_chat_rows(cfg, split)
    if name not in PREF_DATASETS:
        raise ValueError(f"dataset.name: {name!r} is not a preference dataset ({', '.join(PREF_DATASETS)})")
    raw = _read_source(cfg, split)
    out: list[dict[str, Any]] = []
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
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": r.get("subset") or "hh_rlhf"}
            out.append(with_rubric(row, r, name, i))
        return out
    fields = ("prompt", "chosen", "rejected") + (("subset",) if name == "rewardbench" else ())
    fields += ("rationale",) if name == "hh_rationales" else ()
    validate_rows(name, raw, fields)
    for i, r in enumerate(raw):
        row = {"prompt": _message_text(r["prompt"]), "chosen": str(r["chosen"]), "rejected": str(r["rejected"]),
               "subset": str(r.get("subset") or name)}
        if r.get("rationale"):
            row["rationale"] = str(r["rationale"])
        out.append(with_rubric(row, r, name, i))
    return out


def rb2_rows(cfg: DatasetConfig) -> list[dict[str, Any]]:
    """RewardBench 2 rows (allenai/reward-bench-2, split "test", or dataset.path in that schema): id, prompt, chosen
    (list), rejected (list), num_correct, subset. A row missing a field, or whose lists are empty, fails naming it."""
    if cfg.name != "rewardbench2":
        raise ValueError(f"dataset.name: {cfg.name!r} is not rewardbench2")
    raw = _read_source(cfg, "test")
    validate_rows(cfg.name, raw, ("id", "prompt", "chosen", "rejected", "num_correct", "subset"))
    out = []
    for i, r in enumerate(raw):
        for key in ("chosen", "rejected"):
            if not isinstance(r[key], list) or not r[key] or not all(isinstance(x, str) for x in r[key]):
                raise ValueError(f"dataset {cfg.name} row {i}: field '{key}' must be a non-empty list of strings")
        if int(r["num_correct"]) != len(r["chosen"]):
            raise ValueError(f"dataset {cfg.name} row {i}: num_correct={r['num_correct']} but {len(r['chosen'])} "
                             "chosen replies")
        out.append({"id": str(r["id"]), "prompt": _message_text(r["prompt"]), "chosen": list(r["chosen"]),
                    "rejected": list(r["rejected"]), "num_correct": int(r["num_correct"]), "subset": str(r["subset"])})
    return out[: cfg.num_test] if cfg.num_test else out


def load_pref_split(cfg: DatasetConfig, split: str):
    """datasets.Dataset with prompt, chosen, rejected, subset (+ rationale, rubric when the source has them).

    At most dataset.num_train (split "train") or dataset.num_test rows (any other split) are kept, in source order.
    """
    rows = pref_rows(cfg, split)
    cap = cfg.num_train if split == "train" else cfg.num_test
    rows = rows[:cap] if cap and cap > 0 else rows
    columns = ["prompt", "chosen", "rejected", "subset"]
    columns += [c for c in ("rationale", "rubric") if any(c in r for r in rows)]
    return dataset_from_columns({c: [r.get(c, "") for r in rows] for c in columns})


def demo_pool_rows(cfg: DatasetConfig, n: int = 48) -> list[dict[str, Any]]:
    """Candidate in-context demonstrations: the first n train pairs of the dataset (never test problems)."""
    if cfg.name == "synthetic_prefs":
        return synthetic_rows(replace(cfg, num_train=n), "train")
    return pref_rows(cfg, "train")[:n]
