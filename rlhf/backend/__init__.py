"""Training backends (plain torch, DeepSpeed ZeRO), checkpoints and the process group. See rlhf/backend/base.py."""

from __future__ import annotations

from rlhf.backend.base import TorchBackend, TrainingBackend, setup_torch
from rlhf.backend.distributed import DistContext
from rlhf.config import Config
from rlhf.model.policy import Policy


def build_backend(cfg: Config, policy: Policy, dist: DistContext) -> TrainingBackend:
    """hardware.deepspeed_stage 0: TorchBackend; 2 or 3: DeepSpeedBackend (deepspeed is imported only then)."""
    if not cfg.hardware.deepspeed_stage:
        return TorchBackend(policy, cfg.algo)
    # optional heavy dependency: deepspeed is imported only here (after init_distributed set DS_ACCELERATOR)
    from rlhf.backend.zero import DeepSpeedBackend

    return DeepSpeedBackend(cfg, policy, dist)


__all__ = ["TorchBackend", "TrainingBackend", "build_backend", "setup_torch"]
