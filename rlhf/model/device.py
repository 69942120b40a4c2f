"""The torch device a config asks for."""

from __future__ import annotations

from typing import Optional

import torch

from rlhf.config import HardwareConfig


def resolve_device(hw: Optional[HardwareConfig]) -> torch.device:
    """hardware.device: cpu | cuda | auto (cuda when available). Asking for cuda without one fails, naming the key."""
    name = hw.device if hw is not None else "cpu"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("hardware.device: cuda requested but torch.cuda.is_available() is False")
    return torch.device(name)
