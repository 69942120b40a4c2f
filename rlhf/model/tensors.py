"""Batching token sequences: padding and the position ids that go with it."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "left") -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (B, longest); side="left" aligns sequences to the right end (generation, prefix scoring),
    side="right" to the left (reward-model scoring, loss targets)."""
    if side not in ("left", "right"):
        raise ValueError(f"pad side must be 'left' or 'right', got {side!r}")
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not len(s):
            continue
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def position_ids_from_mask(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position of each real token = number of real tokens before it (+ offset): left padding does not shift
    positions; pads get position `offset`."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0) + offset
