"""In-memory `datasets.Dataset` from Python columns, with a content fingerprint computed here.

datasets fingerprints a new in-memory table by pickling it with dill; under Python 3.12 that raises
`PicklingError: Can't pickle <class 'MonthDayNano'>` (pyarrow's interval type; seen on the lent GPU machine with
Python 3.12.3, datasets 5.2.0 and dill 0.4.1), so every run there failed while loading its prompts. A sha256 of the
columns is the same content fingerprint without pickling anything."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

import datasets
from datasets.table import InMemoryTable


def dataset_from_columns(columns: Dict[str, List[Any]]) -> datasets.Dataset:
    fingerprint = hashlib.sha256(json.dumps(columns, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return datasets.Dataset(InMemoryTable.from_pydict(columns), fingerprint=fingerprint)


def dataset_from_rows(rows: List[Dict[str, Any]]) -> datasets.Dataset:
    """As `datasets.Dataset.from_list`: the first row's keys are the columns (a key missing from a row is None)."""
    return dataset_from_columns({k: [r.get(k) for r in rows] for k in (rows[0] if rows else {})})
