"""The judge rubric format: one line of JSON, global (``judge.rubric``) or per row (an optional ``rubric`` column).

    {"criteria": "<one text>", "scale": [1, 5], "output": "a single digit"}
    {"criteria": [{"name": "correctness", "description": "the final answer is right", "weight": 0.7},
                  {"name": "clarity", "description": "the steps are easy to follow", "weight": 0.3}],
     "scale": [1, 5], "output": "a single digit"}

The string form is one criterion named "overall" with weight 1, shown to the judge exactly as written. Each criterion
of the list form is judged on its own (its prompt shows "<name> (<description>)"), and the judge's score is the
weighted mean of the criterion scores (weights normalised to sum 1; a missing weight is 1). Every problem fails with
one line starting with the key it came from ("judge.rubric: ..." or "dataset <name> row <i>: rubric: ...").
Lives in the dataset layer so that loaders can refuse a bad per-row rubric at load time; the judge re-exports it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from rlhf.config import ConfigError

SINGLE_NAME = "overall"  # the name of the one criterion of the string form (in metrics: criterion/overall_mean)
CRITERION_KEYS = ("name", "description", "weight")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    weight: float  # as given (>= 0); Rubric.weights holds the normalised ones
    text: str  # what the judge prompt shows after "Criteria: "


@dataclass(frozen=True)
class Rubric:
    criteria: Tuple[Criterion, ...]
    low: int
    high: int
    output: str

    @property
    def score_values(self) -> List[int]:
        return list(range(self.low, self.high + 1))

    @property
    def names(self) -> List[str]:
        return [c.name for c in self.criteria]

    @property
    def weights(self) -> List[float]:
        """The criteria weights normalised to sum 1."""
        return normalised_weights([c.weight for c in self.criteria])


def normalised_weights(weights: Sequence[float]) -> List[float]:
    """w_i / sum(w); the sum must be > 0 (parse_rubric refuses all-zero weights)."""
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"criteria weights must sum to > 0, got {list(weights)}")
    return [float(w) / total for w in weights]


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: 'weight' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: 'weight' must be finite, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: 'weight' must be >= 0, got {value!r}")
    return float(value)


def _criterion(obj: Any, i: int, key: str) -> Criterion:
    where = f"{key}: criteria[{i}]"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be an object with 'name', 'description' and 'weight', got {obj!r}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where} has no 'name' (a non-empty string)")
    name = name.strip()
    if not _NAME.match(name):
        raise ConfigError(f"{where}: 'name' {name!r} may only use letters, digits, '_', '-' and '.' (it names the "
                          "metric criterion/<name>_mean)")
    where = f"{where} ({name})"
    unknown = sorted(set(obj) - set(CRITERION_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (a criterion has {', '.join(CRITERION_KEYS)})")
    description = obj.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{where} has no 'description' (a non-empty string)")
    description = description.strip()
    weight = _weight(obj.get("weight", 1.0), where)
    return Criterion(name, description, weight, f"{name} ({description})")


def parse_criteria(criteria: Any, key: str) -> Tuple[Criterion, ...]:
    if isinstance(criteria, str) and criteria.strip():
        return (Criterion(SINGLE_NAME, criteria.strip(), 1.0, criteria.strip()),)
    if isinstance(criteria, list):
        if not criteria:
            raise ConfigError(f"{key}: 'criteria' is an empty list; give at least one criterion")
        out = [_criterion(c, i, key) for i, c in enumerate(criteria)]
        seen = set()
        for i, c in enumerate(out):
            if c.name in seen:
                raise ConfigError(f"{key}: criteria[{i}]: duplicate name {c.name!r}")
            seen.add(c.name)
        if not sum(c.weight for c in out) > 0:
            raise ConfigError(f"{key}: the criteria weights are all 0; at least one must be > 0")
        return tuple(out)
    raise ConfigError(f"{key}: 'criteria' must be a non-empty string or a list of criteria "
                      "({\"name\", \"description\", \"weight\"} objects)")


def parse_rubric(text: str, key: str = "judge.rubric") -> Rubric:
    """One line of JSON {"criteria": str | [{name, description, weight}, ...], "scale": [low, high], "output": str}.
    ``key`` starts every error message (judge.rubric, or the dataset row a per-row rubric came from)."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: must be a string of JSON, got {type(text).__name__}")
    if "\n" in text.strip():
        raise ConfigError(f"{key}: must be a single line of JSON")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{key}: must be a JSON object")
    criteria = parse_criteria(obj.get("criteria"), key)
    scale = obj.get("scale", [1, 5])
    if (not isinstance(scale, list) or len(scale) != 2 or not all(isinstance(x, int) for x in scale)
            or not 0 <= scale[0] < scale[1] <= 9):
        raise ConfigError(f"{key}: 'scale' must be [low, high] with 0 <= low < high <= 9, got {scale!r}")
    return Rubric(criteria, scale[0], scale[1], str(obj.get("output", "a single digit")))


def row_rubric(value: Any, key: str) -> Optional[str]:
    """A row's optional ``rubric`` field, checked: None when absent or empty, else its one-line JSON text (an object is
    accepted too and written as JSON). Raises ConfigError starting with ``key`` when it is not a valid rubric."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, dict):
        value = json.dumps(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be a JSON string, got {type(value).__name__}")
    parse_rubric(value, key)
    return value.strip()
