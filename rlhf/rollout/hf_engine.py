"""Rollouts through transformers `generate` on the trainer's own model (no weight sync needed)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch

from rlhf.rollout.base import Rollout, SamplingParams, eos_token_ids


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: Set[int], pad_id: Optional[int]):
    """(B, R) ids -> (mask (B, R) float, finished (B,) bool).

    A response runs up to and including its first EOS token; a pad token (when distinct from EOS) ends it without
    being part of it. Rows with neither ran into the length limit (finished=False) and are fully valid.
    """
    B, R = response_ids.shape
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response_ids == e
    is_pad = (response_ids == pad_id) & ~is_eos if pad_id is not None else torch.zeros_like(is_eos)
    stop = is_eos | is_pad
    pos = torch.arange(R, device=response_ids.device).expand(B, R)
    first = torch.where(stop, pos, torch.full_like(pos, R)).min(dim=1).values  # (B,) index of the first stop token
    ends_with_eos = is_eos.gather(1, first.clamp(max=R - 1).unsqueeze(1)).squeeze(1) & (first < R)
    length = first + ends_with_eos.long()
    mask = (pos < length.unsqueeze(1)).float()
    return mask, first < R


def truncate_at_stop(text: str, stop: Sequence[str]) -> Tuple[str, bool]:
    """Cuts text right after the earliest stop string (the stop string is kept)."""
    best = None
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return (text, False) if best is None else (text[:best], True)


@contextmanager
def merged_adapter(model: torch.nn.Module) -> Iterator[None]:
    """Folds LoRA into the base weights for the duration of generation (one matmul per layer per token instead of
    three); unmerged afterwards so training and the adapter-disabled reference see the original base."""
    merge = getattr(model, "merge_adapter", None)
    if merge is None or not getattr(model, "peft_config", None):
        yield
        return
    # unmerging subtracts what merging added, which is not bit-exact in floating point: restore the saved bits so
    # the base (and the reference policy) never drifts and LoRA resume stays bitwise reproducible
    backups = [(p, p.detach().clone()) for n, p in model.named_parameters() if n.endswith("base_layer.weight")]
    merge()
    try:
        yield
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for param, saved in backups:
                param.copy_(saved)


class HFEngine:
    """Generates with the policy's own weights, so `load_weights` is a no-op by construction."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, max_prompt_tokens: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_prompt_tokens = max_prompt_tokens
        self.eos_ids = eos_token_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                                     tokenizer)

    def load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        return None

    @torch.no_grad()
    def generate(
        self, prompts: List[str], sampling: SamplingParams, meta: Optional[List[Dict[str, Any]]] = None
    ) -> Rollout:
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                  truncation=True, max_length=self.max_prompt_tokens)
        n = sampling.n
        prompt_ids = enc.input_ids.repeat_interleave(n, 0).to(self.device)
        prompt_mask = enc.attention_mask.repeat_interleave(n, 0).to(self.device)
        P = prompt_ids.shape[1]
        kwargs: Dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=sorted(self.eos_ids))
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k if sampling.top_k > 0 else None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        was_training = self.model.training
        self.model.eval()
        with merged_adapter(self.model):
            out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
        self.model.train(was_training)
        response_ids = out[:, P:]
        if response_ids.shape[1] == 0:  # every row stopped immediately: keep one (pad) column for shape sanity
            response_ids = torch.full((out.shape[0], 1), tok.pad_token_id, dtype=out.dtype, device=out.device)
        mask, finished = response_mask_from_ids(response_ids, self.eos_ids, tok.pad_token_id)
        texts = []
        for i in range(response_ids.shape[0]):
            ids = response_ids[i][mask[i].bool()].tolist()
            text = tok.decode(ids, skip_special_tokens=True)
            if sampling.stop:
                text, hit = truncate_at_stop(text, sampling.stop)
                finished[i] |= hit
            texts.append(text)
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention = torch.cat([prompt_mask, mask.long()], dim=1)
        return Rollout(
            input_ids=input_ids, attention_mask=attention, response_mask=mask, prompt_len=P, prompts=list(prompts),
            responses=texts, group_size=n, meta=list(meta or []), finished=finished,
        )
