"""Chat prompts (hh_rlhf, synthetic_chat): prompts are conversations ending in a user turn, the reference is the
dataset's chosen reply, and held-out replies are scored by the run's judge or reward model: mean reward, win rate
against the reference reply (reply reward above the reference's: 1, equal: 1/2), and reply length."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import torch

from rlhf.dataset.prefs import pref_rows
from rlhf.task.base import PromptTask, ReplyScorer, TaskItem, TaskMetrics

_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]*")


def transcript_messages(text: str) -> List[Dict[str, str]]:
    """An hh-rlhf "Human: ... Assistant: ... Human: ..." transcript -> chat messages; plain text -> one user turn."""
    parts = _TURN.split(text.strip())
    if len(parts) < 3:
        return [{"role": "user", "content": text.strip()}]
    messages = []
    for who, content in zip(parts[1::2], parts[2::2]):
        role = "user" if who == "Human" else "assistant"
        content = content.strip()
        if messages and messages[-1]["role"] == role:  # glue repeated speakers (rare in hh-rlhf)
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise ValueError("the conversation does not end with a user turn")
    return messages


class ChatTask(PromptTask):
    kind = "chat"
    needs = ("reference",)
    mean_keys = ("reward_mean", "reference_reward_mean", "win_rate", "mean_response_tokens")
    headline = "win_rate"

    def items(self, split: str) -> List[TaskItem]:
        rows = pref_rows(self.cfg, split)
        cap = self.cfg.num_train if split == "train" else self.cfg.num_test
        out = []
        for i, r in enumerate(rows[:cap]):
            try:
                messages = transcript_messages(r["prompt"])
            except ValueError as e:
                raise ValueError(f"dataset {self.name} row {i}: {e}") from None
            out.append(TaskItem(messages=messages, judge_prompt=r["prompt"], reference=r["chosen"],
                                rubric=r.get("rubric")))
        if not out:
            raise ValueError(f"dataset {self.name}: the {split} split has no prompts")
        return out

    def metrics(self, items: Sequence[TaskItem], replies: List[str], lengths: List[float],
                scorer: Optional[ReplyScorer]) -> TaskMetrics:
        if scorer is None:
            raise ValueError(f"dataset {self.name}: chat prompts are scored by a judge or reward model; "
                             "set reward=bt_rm, rubric_judge or lora_judge")
        n = len(items)
        metas = [it.meta for it in items]
        mine = scorer(metas, replies).float().cpu() if n else torch.zeros(0)
        refs = scorer(metas, [it.reference or "" for it in items]).float().cpu() if n else torch.zeros(0)
        wins = (mine > refs).float() + 0.5 * (mine == refs).float()
        summary = {"n": n, "reward_mean": float(mine.mean()) if n else 0.0,
                   "reference_reward_mean": float(refs.mean()) if n else 0.0,
                   "win_rate": float(wins.mean()) if n else 0.0,
                   "mean_response_tokens": sum(lengths) / max(len(lengths), 1)}
        examples = [{"prompt": it.judge_prompt, "response": r, "reference": it.reference, "reward": float(m),
                     "reference_reward": float(f)} for it, r, m, f in zip(items, replies, mine, refs)]
        return TaskMetrics(summary, examples)
