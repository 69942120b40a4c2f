"""Math word-problem splits with `question` and GSM8K-format `answer` columns: synthetic_math or gsm8k.

gsm8k comes from the hub (``dataset.hub_id`` / ``dataset.hub_config``, network needed) or, when ``dataset.path`` is
set, from a local jsonl/json/parquet file in the hub schema ({"question": ..., "answer": "...\\n#### 72"}). A path
containing ``{split}`` is formatted with the split name (``data/gsm8k_{split}.jsonl``); otherwise the same file serves
both splits. Every returned row is checked, and a bad one fails with its 0-based index in the file. An optional
``rubric`` column (one-line JSON in the judge.rubric format) replaces judge.rubric when a judge scores that row's
prompt; a rubric that does not parse fails at load time with the row's index.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import datasets

from rlhf.config import DatasetConfig
from rlhf.config.checks import MATH_DATASETS
from rlhf.dataset.rubric import row_rubric
from rlhf.dataset.table import dataset_from_rows
from rlhf.dataset.synthetic_math import SPLITS, generate_problems
from rlhf.report.io import read_text_file

log = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
REQUIRED = ("question", "answer")
RUBRIC = "rubric"  # optional per-row judge rubric (JSON), which replaces judge.rubric for that row


def judge_prompt(question: str, instruction: Optional[str]) -> str:
    """The prompt a judge sees for a math problem (question plus the policy's answer-format instruction)."""
    return f"{question}\n{instruction}" if instruction else question


def _row_problem(row: Dict[str, Any]) -> Optional[str]:
    for key in REQUIRED:
        value = row.get(key)
        if value is None:
            return f"missing field '{key}'"
        if not isinstance(value, str):
            return f"field '{key}' must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"field '{key}' is empty"
    if "#### " not in row["answer"]:
        return "field 'answer' has no '#### <answer>' line"
    return None


def validate_rows(ds: datasets.Dataset, name: str) -> None:
    """Raises ValueError("dataset <name> row <i>: ...") for the first row without a usable question/answer, or with
    an optional ``rubric`` that is not a valid judge rubric (rlhf/dataset/rubric.py)."""
    columns = {key: (ds[key] if key in ds.column_names else [None] * len(ds)) for key in REQUIRED}
    rubrics = ds[RUBRIC] if RUBRIC in ds.column_names else [None] * len(ds)
    for i in range(len(ds)):
        problem = _row_problem({key: columns[key][i] for key in REQUIRED})
        if problem:
            raise ValueError(f"dataset {name} row {i}: {problem}")
        row_rubric(rubrics[i], f"dataset {name} row {i}: rubric")


def _diagnose_json(path: Path, name: str) -> None:
    """After a failed load of a json(l) file, find the offending row ourselves so the error can name it."""
    text = read_text_file(path, "dataset.path")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None  # not one JSON document: JSON lines
    else:
        if not isinstance(data, list):
            return  # some other layout; let the loader's own error stand
    rows = data
    if rows is None:
        rows = []
        for i, line in enumerate(l for l in text.splitlines() if l.strip()):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"dataset {name} row {i}: not valid JSON ({e.msg}) in {path}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"dataset {name} row {i}: expected a JSON object, got {type(row).__name__}")
        problem = _row_problem(row)
        if problem:
            raise ValueError(f"dataset {name} row {i}: {problem}")


def _load_file(cfg: DatasetConfig, split: str) -> datasets.Dataset:
    path = Path(cfg.path.format(split=split) if "{split}" in cfg.path else cfg.path).expanduser()
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"dataset.path: {path} has an unsupported extension; use one of {sorted(FILE_BUILDERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"dataset.path: {path} does not exist")
    if builder == "json" and not read_text_file(path, "dataset.path").strip():
        raise ValueError(f"dataset.path: {path} has no rows (empty file)")
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:
        if builder == "json":
            _diagnose_json(path, cfg.name)  # raises with a row index when it finds the culprit
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"dataset.path: {path} could not be read as {builder} ({first})") from None
    if len(ds) == 0:
        raise ValueError(f"dataset.path: {path} has no rows")
    return ds


def _load_gsm8k(cfg: DatasetConfig, split: str) -> datasets.Dataset:
    if cfg.path:
        return _load_file(cfg, split)
    if not cfg.hub_id:
        raise ValueError("dataset.hub_id: gsm8k needs dataset.hub_id (e.g. openai/gsm8k) or a local dataset.path")
    log.info("Loading %s (%s) split %s from the hub", cfg.hub_id, cfg.hub_config, split)
    return datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)


def load_math_split(cfg: DatasetConfig, split: str) -> datasets.Dataset:
    """The ``split`` ("train" | "test") of the math dataset ``cfg.name``, truncated to num_train / num_test rows."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {list(SPLITS)}")
    n = cfg.num_train if split == "train" else cfg.num_test
    if n <= 0:
        raise ValueError(f"dataset.num_{split}: must be > 0, got {n}")
    if cfg.name == "synthetic_math":
        ds = dataset_from_rows(generate_problems(cfg, split, n))
    elif cfg.name == "gsm8k":
        ds = _load_gsm8k(cfg, split)
        if len(ds) > n:
            ds = ds.select(range(n))
    else:
        raise ValueError(f"dataset.name: {cfg.name!r} is not a math dataset; load_math_split supports "
                         f"{list(MATH_DATASETS)}")
    validate_rows(ds, cfg.name)
    return ds
