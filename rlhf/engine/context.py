"""Objects a run shares between components (so a judge can reuse the actor's base model and tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from rlhf.config import Config


@dataclass
class TrainContext:
    cfg: Config
    tokenizer: Any
    run_dir: Path
    device: torch.device
    # the actor's nn.Module: a PreTrainedModel, or a peft PeftModel when model.lora.enabled
    actor_model: Optional[torch.nn.Module] = None
    # full fine-tuning: the frozen reference copy (a rubric judge can run on it); None with LoRA
    reference_model: Optional[torch.nn.Module] = None
    # log(metrics: dict, step: int, prefix: str) -> None: writes to the run's metrics.jsonl / wandb
    log: Optional[Callable[..., None]] = None
