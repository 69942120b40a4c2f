"""Prompt tasks: what RL trains on. `build_task(dataset_cfg)` picks one by dataset.name.

math (synthetic_math, gsm8k): reference answers, exact-match metrics. chat (synthetic_chat, hh_rlhf): reference
replies, metrics from the run's judge / reward model. Preference-only datasets (synthetic_prefs, rewardbench,
hh_rationales) train and evaluate judges; they give RL no prompts.
"""

from __future__ import annotations

from rlhf.config import DatasetConfig
from rlhf.task.base import PromptTask, TaskItem, TaskMetrics
from rlhf.task.chat import ChatTask
from rlhf.task.math import MathTask

MATH_TASK_DATASETS = ("synthetic_math", "gsm8k")
CHAT_TASK_DATASETS = ("synthetic_chat", "hh_rlhf")
TASK_DATASETS = MATH_TASK_DATASETS + CHAT_TASK_DATASETS


def build_task(cfg: DatasetConfig) -> PromptTask:
    if cfg.name in MATH_TASK_DATASETS:
        return MathTask(cfg)
    if cfg.name in CHAT_TASK_DATASETS:
        return ChatTask(cfg)
    raise ValueError(f"dataset: {cfg.name} is a preference-pair dataset with no prompts to train on; RL runs on "
                     f"{list(TASK_DATASETS)}")


__all__ = ["ChatTask", "MathTask", "PromptTask", "TaskItem", "TaskMetrics", "TASK_DATASETS", "build_task"]
