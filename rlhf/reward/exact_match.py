"""GSM8K exact-match reward on the final answer (strict `#### N` or flexible last number)."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from rlhf.config import RewardConfig
from rlhf.reward.base import RewardOutput
from rlhf.rollout.base import Rollout
from rlhf.task.math_grading import answer_formatted, is_correct


class ExactMatchReward:
    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg

    def _rewards(self, metas: List[Dict[str, Any]], replies: List[str]):
        correct = [is_correct(resp, m["answer"], self.cfg.mode) for resp, m in zip(replies, metas)]
        formatted = [answer_formatted(resp, self.cfg.format_at_end) for resp in replies]
        rewards = [
            (self.cfg.correct_reward if c else self.cfg.wrong_reward) + (self.cfg.format_bonus if f else 0.0)
            for c, f in zip(correct, formatted)
        ]
        return rewards, correct, formatted

    def score_replies(self, metas: List[Dict[str, Any]], replies: List[str]) -> torch.Tensor:
        return torch.tensor(self._rewards(metas, replies)[0], dtype=torch.float32)

    def score(self, rollout: Rollout) -> RewardOutput:
        metas = rollout.meta_per_sample()
        rewards, correct, formatted = self._rewards(metas, rollout.responses)
        strict = [is_correct(r, m["answer"], "strict") for r, m in zip(rollout.responses, metas)]
        flexible = [is_correct(r, m["answer"], "flexible") for r, m in zip(rollout.responses, metas)]
        n = max(len(rewards), 1)
        return RewardOutput(
            rewards=torch.tensor(rewards, dtype=torch.float32),
            correct=torch.tensor(correct, dtype=torch.bool),
            metrics={
                "em_strict": sum(strict) / n,
                "em_flexible": sum(flexible) / n,
                "format_rate": sum(formatted) / n,
            },
        )

