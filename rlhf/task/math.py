"""Verifiable math (synthetic_math, gsm8k): prompts are word problems, the reference is the GSM8K answer field, the
held-out metric is greedy exact match (strict `#### N` and flexible last number). A row's optional `rubric` column
travels in the item's metadata to a judge reward."""

from __future__ import annotations

from typing import List, Optional, Sequence

from rlhf.dataset.math_data import judge_prompt, load_math_split
from rlhf.dataset.rubric import row_rubric
from rlhf.task.base import PromptTask, ReplyScorer, TaskItem, TaskMetrics
from rlhf.task.math_grading import score_predictions


class MathTask(PromptTask):
    kind = "math"
    needs = ("answer",)
    mean_keys = ("em_strict", "em_flexible", "mean_response_tokens")
    headline = "em_flexible"

    def items(self, split: str) -> List[TaskItem]:
        return [TaskItem(messages=[{"role": "user", "content": r["question"]}],
                         judge_prompt=judge_prompt(r["question"], self.system_prompt), answer=r["answer"],
                         rubric=row_rubric(r.get("rubric"), f"dataset {self.name} row {i}: rubric"))
                for i, r in enumerate(load_math_split(self.cfg, split))]

    def metrics(self, items: Sequence[TaskItem], replies: List[str], lengths: List[float],
                scorer: Optional[ReplyScorer] = None) -> TaskMetrics:
        preds = [{"answer": it.answer, "response": r, "question": it.messages[-1]["content"]}
                 for it, r in zip(items, replies)]
        scored = score_predictions(preds)
        examples = [{**p, **res} for p, res in zip(preds, scored["results"])]
        return TaskMetrics({"n": scored["n"], "em_strict": scored["em_strict"], "em_flexible": scored["em_flexible"],
                            "mean_response_tokens": sum(lengths) / max(len(lengths), 1)}, examples)
