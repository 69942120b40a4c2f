"""Training with frozen lower layers: each sequence's activations below the first trainable layer are computed once.

With LoRA on the last k decoder layers only (``judge.lora_layers``), layers 0..L-k-1 and the embeddings never change
during training, so their output for a given token sequence is the same at every epoch. ``FrozenPrefixForward``
computes it the first time a sequence is seen (no grad) and keeps it; later visits run only the trainable top
layers and the final norm. The decoder loop is the model's own (its rotary embedding, ``create_causal_mask`` on the
same attention mask, the same layer call), so the result equals a full forward up to float rounding. Only
Llama-style backbones (``embed_tokens``, ``layers``, ``rotary_emb``, ``norm``) are supported; ``for_backbone``
returns None otherwise, and ``verified_scorer`` checks the first batch against the full forward before relying on it.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from transformers.masking_utils import create_causal_mask

from rlhf.model.tensors import pad_sequences

log = logging.getLogger(__name__)


def first_trainable_layer(model: torch.nn.Module) -> int:
    """Index of the first decoder layer with a trainable parameter (len(layers) when none); 0 when the embeddings
    train."""
    if any(p.requires_grad for p in model.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(model.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(model.layers)


class FrozenPrefixForward:
    """Last hidden states of batches of token sequences (right-padded), with the frozen lower layers' output cached
    per sequence. ``max_bytes`` bounds the cache; past it, sequences not cached yet run the frozen layers every time."""

    def __init__(self, model: torch.nn.Module, start: int, pad_id: int, max_bytes: int = 4 << 30):
        self.model, self.start, self.pad_id, self.max_bytes = model, start, pad_id, max_bytes
        self.cache: Dict[Tuple[int, ...], torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_backbone(cls, backbone: torch.nn.Module, pad_id: int) -> Optional["FrozenPrefixForward"]:
        """For a (peft-wrapped) Llama-style backbone whose lower layers are all frozen; None when unsupported or
        when nothing below the trainable layers is frozen (no saving)."""
        model = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        if not all(hasattr(model, a) for a in ("embed_tokens", "layers", "rotary_emb", "norm", "config")):
            return None
        start = first_trainable_layer(model)
        if start == 0:
            return None
        return cls(model, start, pad_id)

    def _layers(self, hidden: torch.Tensor, mask: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        causal = create_causal_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask,
                                    past_key_values=None, position_ids=pos)
        rope = self.model.rotary_emb(hidden, position_ids=pos)
        for layer in self.model.layers[lo:hi]:
            hidden = layer(hidden, attention_mask=causal, position_embeddings=rope, position_ids=pos,
                           past_key_values=None, use_cache=False)
        return hidden

    def _frozen(self, keys: Sequence[Tuple[int, ...]], device: torch.device) -> Dict[Tuple[int, ...], torch.Tensor]:
        """Frozen-layer output of every key: cached ones looked up, the rest computed in one batched no-grad
        forward and cached while the cache is under max_bytes."""
        new = list(dict.fromkeys(k for k in keys if k not in self.cache))
        self.hits += len(keys) - len(new)
        self.misses += len(new)
        out = {k: self.cache[k] for k in keys if k in self.cache}
        if not new:
            return out
        ids, mask = pad_sequences(new, self.pad_id, side="right")
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            hidden = self._layers(self.model.embed_tokens(ids), mask, 0, self.start)
        for row, key in enumerate(new):
            h = hidden[row, :len(key)].detach().clone()
            out[key] = h
            if self.bytes + h.numel() * h.element_size() <= self.max_bytes:
                self.cache[key] = h
                self.bytes += h.numel() * h.element_size()
        return out

    def __call__(self, seqs: Sequence[Sequence[int]], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state (B, T, H) after the final norm, right-padded mask (B, T)) of the sequences."""
        keys = [tuple(s) for s in seqs]
        frozen = self._frozen(keys, device)
        width = max(len(k) for k in keys)
        ref = frozen[keys[0]]
        hidden = torch.zeros((len(keys), width, ref.shape[-1]), dtype=ref.dtype, device=device)
        mask = torch.zeros((len(keys), width), dtype=torch.long, device=device)
        for row, key in enumerate(keys):
            hidden[row, :len(key)] = frozen[key]
            mask[row, :len(key)] = 1
        return self.model.norm(self._layers(hidden, mask, self.start, len(self.model.layers))), mask


Scorer = Callable[[Sequence[Sequence[int]]], torch.Tensor]


def verified_scorer(module: torch.nn.Module, fast: Optional[FrozenPrefixForward],
                    head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], full: Scorer, name: str) -> Scorer:
    """A training scorer: ``head(*fast(seqs))`` when ``fast`` is given and agrees with ``full(seqs)`` on the first
    batch (both run once in eval mode without grad, so dropout does not differ), else ``full``. The returned function
    carries ``.cache`` (the FrozenPrefixForward or None) for its hit/miss counts."""
    if fast is None:
        return full
    state = {"checked": False, "use": True}

    def cached(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        device = next(module.parameters()).device
        return head(*fast(seqs, device))

    def score(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        if not state["checked"]:
            state["checked"] = True
            was_training = module.training
            module.eval()
            with torch.no_grad():
                b = full(seqs)
                try:
                    a = cached(seqs)
                except Exception as err:  # a backbone whose layers take other arguments: the full forward works
                    log.warning("%s: the frozen-layer cache does not run on this backbone (%s); training with full "
                                "forwards", name, err)
                    a = torch.full_like(b, float("nan"))
            module.train(was_training)
            gap = float((a - b).abs().max())
            tol = 1e-3 if fast.model.embed_tokens.weight.dtype == torch.float32 else 5e-2
            state["use"] = gap <= tol * max(1.0, float(b.abs().max()))  # False for NaN
            if state["use"]:
                log.info("%s: layers 0-%d are frozen; their output is computed once per training sequence (max "
                         "score gap to the full forward %.1e)", name, fast.start - 1, gap)
            else:
                log.warning("%s: the frozen-layer cache disagrees with the full forward (max score gap %.3g); "
                            "training with full forwards", name, gap)
        return cached(seqs) if state["use"] else full(seqs)

    score.cache = fast  # type: ignore[attr-defined]
    return score
