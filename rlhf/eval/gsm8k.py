"""`python -m rlhf.evaluate task=gsm8k`: exact match of a predictions file (or of a model's greedy replies).

Grading itself lives in rlhf.task.math_grading (the math task's metric, shared with the exact-match reward)."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from rlhf.eval.policy_eval import run_model_task
from rlhf.report.io import read_jsonl
from rlhf.task.math_grading import score_predictions


def markdown_table(results: Dict[str, Any]) -> str:
    return (
        "| task | n | EM strict | EM flexible |\n"
        "|---|---:|---:|---:|\n"
        f"| {results['task']} | {results['n']} | {results['em_strict']:.4f} | {results['em_flexible']:.4f} |\n"
    )


def run_task(cfg) -> Tuple[Dict[str, Any], str]:
    """`python -m rlhf.evaluate task=gsm8k`: score a predictions file, or generate with a model when there is none."""
    if cfg.predictions is None:
        return run_model_task(cfg)
    if cfg.limit < 0:
        raise ValueError(f"limit: must be >= 0, got {cfg.limit}")
    # missing, undecodable or empty files and lines that are not JSON objects fail naming the key, file and line
    rows = read_jsonl(cfg.predictions, what="predictions")
    if cfg.limit:
        rows = rows[: cfg.limit]
    results = score_predictions(rows)
    results["predictions"] = str(cfg.predictions)
    return results, markdown_table(results)
