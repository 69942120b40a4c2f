"""Next-token logits after [shared prefix | per-item suffix], with or without a reused KV cache of the prefix.

Layout of one batch (suffixes left-padded; pads masked out; positions count real tokens only):
    no cache:   [pad ... pad | prefix | suffix_i]          -> one forward over the full width
    with cache: (prefix, cached once) [pad ... pad | suffix_i]  -> forward over the suffix width only
Real tokens get the same positions (0..P-1 for the prefix, P.. for the suffix) and attend to the same real keys in
both layouts, so the last-position logits agree up to float rounding. Only the last position's logits are computed
(``logits_to_keep=1``) and, for verdicts, only the columns of the verdict tokens are kept.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from transformers import DynamicCache

from rlhf.model.tensors import pad_sequences, position_ids_from_mask


class PrefixCache:
    """The prefix's per-layer keys/values (batch 1), expanded to a fresh DynamicCache per batch.

    grad=True keeps the keys/values in the autograd graph (LoRA judge training: one prefix forward per step, its
    gradient summed over the batch through expand); the default is a detached, reusable cache for scoring."""

    def __init__(self, model: torch.nn.Module, prefix_ids: Sequence[int], device: torch.device, grad: bool = False):
        self.length = len(prefix_ids)
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=device)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        self.kv = [(layer.keys, layer.values) if grad else (layer.keys.detach(), layer.values.detach())
                   for layer in cache.layers]

    def expand(self, batch: int) -> DynamicCache:
        # expand() is a view; the cache's first update() concatenates, which copies, so self.kv is never modified.
        return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                            for k, v in self.kv])


def last_logits(model: torch.nn.Module, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]], pad_id: int,
                device: torch.device, cache: Optional[PrefixCache] = None) -> torch.Tensor:
    """(B, V) float32 logits of the token after prefix + suffix_i, for one batch of suffixes."""
    if cache is not None:
        ids, mask = pad_sequences(suffixes, pad_id)
        b = ids.shape[0]
        full_mask = torch.cat([torch.ones((b, cache.length), dtype=torch.long), mask], dim=1)
        pos = position_ids_from_mask(mask, offset=cache.length)
        out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=pos.to(device),
                    past_key_values=cache.expand(b), use_cache=True, logits_to_keep=1)
    else:
        ids, mask = pad_sequences([list(prefix_ids) + list(s) for s in suffixes], pad_id)
        pos = position_ids_from_mask(mask)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    use_cache=False, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def batched_verdict_logits(model: torch.nn.Module, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]],
                           verdict_ids: Sequence[int], pad_id: int, device: torch.device, batch_size: int,
                           cache: Optional[PrefixCache] = None) -> torch.Tensor:
    """(N, K) logits restricted to the verdict tokens, computed batch by batch (longest-first to limit padding)."""
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    out = torch.empty((len(suffixes), len(verdict_ids)), dtype=torch.float32)
    cols = torch.tensor(list(verdict_ids), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = last_logits(model, prefix_ids, [suffixes[i] for i in idx], pad_id, device, cache)
            out[idx] = logits[:, cols.to(logits.device)].cpu()
    return out


def train_logits_with_prefix(model: torch.nn.Module, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]],
                             pad_id: int, device: torch.device, keep: int) -> torch.Tensor:
    """train_logits of prefix + suffix_i with the shared prefix run once (with gradients) and its keys/values expanded
    over the batch: the same logits and gradients, without recomputing the prefix for every row."""
    cache = PrefixCache(model, prefix_ids, device, grad=True)
    ids, mask = pad_sequences(suffixes, pad_id)
    b = ids.shape[0]
    full_mask = torch.cat([torch.ones((b, cache.length), dtype=torch.long), mask], dim=1)
    pos = position_ids_from_mask(mask, offset=cache.length)
    return model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=pos.to(device),
                 past_key_values=cache.expand(b), use_cache=True, logits_to_keep=keep).logits


def train_logits(model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device,
                 keep: int) -> torch.Tensor:
    """(B, keep, V) logits (with gradients) of the last ``keep`` positions of left-padded sequences."""
    ids, mask = pad_sequences(seqs, pad_id)
    pos = position_ids_from_mask(mask)
    return model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                 use_cache=False, logits_to_keep=keep).logits
