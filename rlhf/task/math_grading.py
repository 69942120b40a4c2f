"""GSM8K answer extraction and exact-match grading: the math task's held-out metric, its reward and `rlhf.evaluate`.

Two extraction modes, after the two filters lm-evaluation-harness reports for GSM8K:

* ``strict``: the first ``#### <number>`` in the reply, matched with the harness's regex ``#### (\\-?[0-9\\.\\,]+)``
  (so ``#### $5`` or ``####5`` do not count: the model did not follow the format);
* ``flexible``: the last number anywhere in the reply (``-1,234.5``, ``$12``, ``5kg`` all count; digits glued to the
  end of a word, as in ``H2O`` or ``step2``, do not).

Extracted strings are normalised (commas and ``$`` dropped, a trailing period removed: ``"1,000."`` -> ``"1000"``) and
compared with the reference numerically when both parse as numbers (``"5.0"`` equals ``"5"``), else as strings.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, List, Optional, Tuple

MODES = ("strict", "flexible")

# lm-evaluation-harness, gsm8k "strict-match" filter.
STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
# A number: optional sign and dollar sign, digits with well-formed thousands separators (or plain digits), an optional
# decimal part. A trailing period is never consumed because the decimal part needs a digit after the dot.
NUMBER_RE = re.compile(r"(-?)\$?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)")
# The reference answer: whatever follows the last `####` on its line.
REFERENCE_RE = re.compile(r"####[ \t]*([^\n]*)")


def _normalize(raw: str) -> Optional[str]:
    text = raw.strip().replace(",", "").replace("$", "")
    text = text.rstrip(".")
    if not any(ch.isdigit() for ch in text):
        return None
    return text


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"reward.mode: {mode!r} is not one of {list(MODES)}")


def _strict(text: str) -> Optional[str]:
    for match in STRICT_RE.finditer(text):
        return _normalize(match.group(1))
    return None


def _flexible(text: str) -> Optional[str]:
    span = last_number_span(text)
    return _normalize(text[span[0]:span[1]]) if span is not None else None


def last_number_span(text: str) -> Optional[Tuple[int, int]]:
    """(start, end) of the number flexible matching reads as the reply's answer (its sign included), or None."""
    last = None
    for match in NUMBER_RE.finditer(text):
        digits_at = match.start(2)
        before = text[digits_at - 1] if digits_at > 0 else ""
        if before.isalnum() or before == "_":
            continue  # digits glued to a word (H2O, step2)
        if before == "." and digits_at > 1 and text[digits_at - 2].isdigit():
            continue  # the tail of a dotted version-like string (1.2.3)
        sign = match.group(1)
        if sign:
            dash_at = match.start(1)
            prev = text[dash_at - 1] if dash_at > 0 else ""
            if prev and (prev.isalnum() or prev in ")]_"):
                sign = ""  # a range or a difference (5-3, pages 10-12), not a negative number
        last = (match.start(1) if sign else match.start(2), match.end(2))
    return last


def with_final_answer(text: str, value: str) -> Optional[str]:
    """``text`` with its answer replaced by ``value``: the number flexible matching reads, and the strict ``#### N``
    answer too when that reads the same number. None when the text has no number."""
    span = last_number_span(text)
    if span is None:
        return None
    old = _normalize(text[span[0]:span[1]])
    out = text[:span[0]] + value + text[span[1]:]
    strict = STRICT_RE.search(out)
    if strict is not None and strict.start(1) != span[0] and _normalize(strict.group(1)) == old:
        out = out[:strict.start(1)] + value + out[strict.end(1):]
    return out


def extract_answer(text: str, mode: str) -> Optional[str]:
    """The normalised answer in ``text`` under ``mode`` ("strict" or "flexible"), or None when there is none."""
    _check_mode(mode)
    if text is None:
        return None
    text = str(text)
    return _strict(text) if mode == "strict" else _flexible(text)


def answer_is_final(text: str) -> bool:
    """Whether the reply's ``#### N`` answer (strict) is also its last number (flexible): nothing numeric follows the
    answer line, so "#### 40. The answer is 40." counts and "#### 40 ... 25 + 3 = 28" does not. The reply states one
    final answer, in the format, at the end; the two extractions then agree."""
    strict = extract_answer(text, "strict")
    return strict is not None and extract_answer(text, "flexible") == strict


def answer_formatted(text: str, at_end: bool = True) -> bool:
    """The format check behind ``reward.format_bonus``: a well-formed ``#### N`` answer that is also the reply's last
    number (``at_end``, see answer_is_final), or anywhere in the reply."""
    return answer_is_final(text) if at_end else extract_answer(text, "strict") is not None


def reference_answer(answer_field: str) -> str:
    """The normalised final answer of a GSM8K reference solution (the text after its ``#### ``)."""
    if not isinstance(answer_field, str):
        raise ValueError(f"GSM8K reference answer must be a string, got {type(answer_field).__name__}")
    matches = REFERENCE_RE.findall(answer_field)
    value = matches[-1].strip().replace(",", "").replace("$", "").rstrip(".").strip() if matches else ""
    if not value:
        shown = answer_field if len(answer_field) <= 120 else answer_field[:117] + "..."
        raise ValueError(f"GSM8K reference answer has no '#### <answer>' line: {shown!r}")
    return value


_CALC_RE = re.compile(r"<<[^<>]*>>")


def reference_solution(answer_field: str) -> str:
    """GSM8K answer field -> readable reference solution (calculator annotations <<...>> removed)."""
    return _CALC_RE.sub("", answer_field).strip()


def _as_number(value: str) -> Optional[Decimal]:
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def answers_match(predicted: Optional[str], reference: str) -> bool:
    if predicted is None:
        return False
    a, b = _as_number(predicted), _as_number(reference)
    if a is not None and b is not None:
        return a == b
    return predicted.strip() == reference.strip()


def is_correct(response: str, answer_field: str, mode: str) -> bool:
    """Whether the answer extracted from ``response`` equals the reference in ``answer_field``."""
    predicted = extract_answer(response, mode)
    return answers_match(predicted, reference_answer(answer_field))


def score_predictions(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Strict and flexible exact match over rows {"answer": <GSM8K reference>, "response": <model reply>}."""
    results = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"predictions row {i}: expected a JSON object, got {type(row).__name__}")
        for key in ("answer", "response"):
            if row.get(key) is None:
                raise ValueError(f"predictions row {i}: missing field '{key}'")
            if not isinstance(row[key], str):
                raise ValueError(f"predictions row {i}: field '{key}' must be a string, got {type(row[key]).__name__}")
        try:
            reference = reference_answer(row["answer"])
        except ValueError as e:
            raise ValueError(f"predictions row {i}: field 'answer': {e}") from None
        pred_strict = extract_answer(row["response"], "strict")
        pred_flexible = extract_answer(row["response"], "flexible")
        results.append({
            "index": i,
            "reference": reference,
            "pred_strict": pred_strict,
            "pred_flexible": pred_flexible,
            "correct_strict": answers_match(pred_strict, reference),
            "correct_flexible": answers_match(pred_flexible, reference),
        })
    n = len(results)
    return {
        "task": "gsm8k",
        "n": n,
        "em_strict": sum(r["correct_strict"] for r in results) / n if n else 0.0,
        "em_flexible": sum(r["correct_flexible"] for r in results) / n if n else 0.0,
        "results": results,
    }
