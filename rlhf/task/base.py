"""What RL trains on: a prompt task gives prompts, what each reward needs about them, and its held-out metrics.

A `TaskItem` is one prompt: the chat messages the policy sees (before the task's system prompt), the text a judge or
reward model sees as the prompt, and the references rewards may use (`answer`: a GSM8K-format reference answer for
verifiable math; `reference`: a reference reply for chat), plus an optional per-prompt judge rubric (`rubric`, from
the dataset's rubric column) that a judge reward uses instead of judge.rubric. The trainer only ever sees `TaskItem`s
and `TaskMetrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from rlhf.config import DatasetConfig
from rlhf.dataset.chat import render_prompt
from rlhf.rollout.base import greedy_replies

# scores (prompt metas, replies) with the run's reward (RewardSource.score_replies): (B,) float tensor
ReplyScorer = Callable[[List[Dict[str, Any]], List[str]], torch.Tensor]


@dataclass
class TaskItem:
    messages: List[Dict[str, str]]  # user/assistant turns, ending with a user turn
    judge_prompt: str  # the prompt as a judge / RM reads it
    answer: Optional[str] = None  # math: GSM8K-format reference answer ("... #### 72")
    reference: Optional[str] = None  # chat: a reference reply (win rate is measured against it)
    rubric: Optional[str] = None  # the row's own judge rubric (one-line JSON), used instead of judge.rubric

    @property
    def meta(self) -> Dict[str, Any]:
        """What travels with the prompt through the rollout to the rewards."""
        out: Dict[str, Any] = {"judge_prompt": self.judge_prompt}
        if self.answer is not None:
            out["answer"] = self.answer
        if self.reference is not None:
            out["reference"] = self.reference
        if self.rubric is not None:
            out["rubric"] = self.rubric
        return out


@dataclass
class TaskMetrics:
    """Held-out metrics of greedy replies: `summary` (numbers, logged as eval/<key>) and a few examples."""

    summary: Dict[str, float]
    examples: List[Dict[str, Any]] = field(default_factory=list)


class PromptTask:
    """Base class: `items(split)` and `metrics(items, replies, lengths, scorer)`; `needs` names the references every
    item carries ("answer" and/or "reference"), so start-up can refuse a reward the task cannot feed."""

    name: str = ""
    kind: str = ""
    needs: tuple = ()

    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.system_prompt = cfg.system_prompt

    def items(self, split: str) -> List[TaskItem]:
        raise NotImplementedError

    def prompt_text(self, tokenizer, item: TaskItem) -> str:
        return render_prompt(tokenizer, item.messages, self.system_prompt)

    def metrics(self, items: Sequence[TaskItem], replies: List[str], lengths: List[float],
                scorer: Optional[ReplyScorer]) -> TaskMetrics:
        raise NotImplementedError

    def evaluate(self, engine, tokenizer, items: Sequence[TaskItem], batch_size: int, max_new_tokens: int,
                 scorer: Optional[ReplyScorer] = None, progress: bool = False, desc: str = "eval") -> TaskMetrics:
        """Greedy replies of the rollout engine's current policy to held-out items, then this task's metrics."""
        prompts = [self.prompt_text(tokenizer, it) for it in items]
        replies, lengths = greedy_replies(engine, prompts, batch_size, max_new_tokens, progress, desc)
        return self.metrics(items, replies, lengths, scorer)

    # the summary key a sweep optimises and `rlhf.train` returns
    headline: str = "n"

    # which summary keys are means over items (weighted by n when rank shards are merged)
    mean_keys: tuple = ("mean_response_tokens",)
