"""Supervised fine-tuning on demonstrations, and the response log-probs it and the self-reward share.

Sequences use the rollout layout: prompts left-padded to a common length P, responses right-padded after them, a
response mask marking real response tokens. ``response_logprobs`` is then the same computation for a rollout and for
a demonstration batch; the SFT loss is the mean negative log-likelihood of the response tokens.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from rlhf.model.policy import gather_logprobs
from rlhf.model.tensors import pad_sequences, position_ids_from_mask

log = logging.getLogger(__name__)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
         pad_id: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(input_ids, attention_mask, response_mask, P): prompts left-padded to P, responses right-padded after them."""
    p_ids, p_mask = pad_sequences(prompts, pad_id, side="left")
    r_ids, r_mask = pad_sequences([list(r) or [pad_id] for r in responses], pad_id, side="right")
    r_mask = r_mask * torch.tensor([[1 if r else 0] for r in responses], dtype=r_mask.dtype)  # empty reply: no tokens
    return torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1), r_mask.float(), p_ids.shape[1]


def response_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_len: int) -> torch.Tensor:
    """(B, R) log p(response token | everything before it), temperature 1."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return gather_logprobs(out.logits[:, prompt_len - 1:-1, :], input_ids[:, prompt_len:])


def masked_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the real response tokens of a batch (token-level average)."""
    return -(logprobs * mask).sum() / mask.sum().clamp_min(1.0)


@torch.no_grad()
def sequence_logprobs(model: nn.Module, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                      pad_id: int, batch_size: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, number of response tokens) per sequence, both (N,) float32 on the CPU."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    sums, counts = [], []
    for s in range(0, len(prompts), batch_size):
        ids, mask, rmask, p = pack(prompts[s:s + batch_size], responses[s:s + batch_size], pad_id)
        lp = response_logprobs(model, ids.to(device), mask.to(device), p).float().cpu()
        sums.append((lp * rmask).sum(-1))
        counts.append(rmask.sum(-1))
    return torch.cat(sums), torch.cat(counts)


def train_sft(model: nn.Module, params: List[nn.Parameter], examples: Sequence[Tuple[List[int], List[int]]],
              steps: int, batch_size: int, lr: float, pad_id: int, seed: int = 0,
              log_fn: Optional[Callable[[Dict[str, float], int], None]] = None) -> List[Dict[str, float]]:
    """``steps`` AdamW steps (grad-norm clip 1.0) on seeded batches of (prompt ids, response ids) examples; returns
    the per-step metrics (loss = response-token NLL, tokens), with a progress bar and a log line every tenth step."""
    if not params:
        raise ValueError("sft: the model has no trainable parameters")
    if not examples:
        raise ValueError("sft: no demonstrations to train on")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = params[0].device
    rng = random.Random(f"sft|{seed}")
    order: List[int] = []
    history: List[Dict[str, float]] = []
    every = max(1, steps // 10)
    t0 = time.perf_counter()
    model.train()
    for step in tqdm(range(steps), desc="sft", leave=False, disable=None):
        batch = []
        for _ in range(min(batch_size, len(examples))):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        ids, mask, rmask, p = pack([b[0] for b in batch], [b[1] for b in batch], pad_id)
        loss = masked_nll(response_logprobs(model, ids.to(device), mask.to(device), p), rmask.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        m = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "tokens": float(rmask.sum())}
        history.append(m)
        if log_fn is not None:
            log_fn(m, step)
        if (step + 1) % every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - t0
            log.info("sft step %d/%d: loss %.4f (%.0f s, ~%.0f s left)", step + 1, steps, m["loss"], elapsed,
                     elapsed / (step + 1) * (steps - step - 1))
    model.eval()
    return history
