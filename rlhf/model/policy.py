"""The actor (optionally with LoRA and a value head) and its frozen reference.

With LoRA the reference is the same base with the adapter disabled; without LoRA it is a frozen copy.
Log-probs are computed for response tokens only, from logits divided by the sampling temperature, so they match
the distribution the rollout engine sampled from.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from rlhf.config import ModelConfig
from rlhf.model.tensors import position_ids_from_mask


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = False):
    """log softmax(logits)[token] per position (and the entropy from the same log-softmax when asked), computed row
    by row to bound peak memory. Returns logprobs, or (logprobs, entropy) with with_entropy=True."""
    out = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
    rows_entropy = []
    for i in range(logits.shape[0]):
        lp = torch.log_softmax(logits[i].float(), dim=-1)
        out[i] = lp.gather(-1, tokens[i].unsqueeze(-1)).squeeze(-1)
        if with_entropy:
            rows_entropy.append(-(lp.exp() * lp).sum(-1))
    return (out, torch.stack(rows_entropy)) if with_entropy else out


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM (under a PEFT wrapper, which passes keyword arguments through) takes transformers'
    `logits_to_keep`, which skips the LM head on the positions it is not asked for (here: the prompt's)."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    return _forward_takes_logits_to_keep(type(inner))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls: type) -> bool:  # once per model class, not once per forward pass
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def shared_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int):
    """(first row of each distinct prompt, each row's prompt number) when at least two rows share their prompt (the
    samples of one prompt in a group), else None: nothing to share."""
    if prompt_len < 2 or input_ids.shape[0] < 2:
        return None
    key = torch.cat([input_ids[:, :prompt_len], attention_mask[:, :prompt_len].to(input_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    if distinct.shape[0] == key.shape[0]:
        return None
    rows = torch.arange(key.shape[0], device=key.device)
    first = torch.full((distinct.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, rows, reduce="amin")
    return first, inverse


def data_parallel() -> bool:
    """Whether gradients are reduced across ranks. DeepSpeed reduces them in buckets filled in the order the
    parameters' gradients become ready, which must be the same on every rank: a rank whose micro-batch shares no
    prompt still runs the two-pass forward (each row its own prompt), so its backward visits the layers in the same
    order as a rank whose micro-batch does (tests/e2e/test_distributed.py, with micro-batches of 2)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def uses_gradient_checkpointing(model: nn.Module) -> bool:
    """transformers turns the KV cache off under gradient checkpointing in training, which prompt sharing needs."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine's module
    return bool(getattr(inner, "is_gradient_checkpointing", False))


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # (B, R)
    entropy: Optional[torch.Tensor]  # (B, R)
    values: Optional[torch.Tensor]  # (B, R)


class Policy(nn.Module):
    def __init__(self, model: nn.Module, value_head: bool, ref_model: Optional[nn.Module] = None,
                 share_prompts: bool = True):
        super().__init__()
        self.model = model
        self.ref_model = ref_model
        self.share_prompts = share_prompts  # model.share_prompts: each distinct prompt's forward once per batch
        hidden = model.config.hidden_size if not isinstance(model, PeftModel) else model.base_model.model.config.hidden_size
        self.value_head: Optional[nn.Linear] = None
        if value_head:
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.model, PeftModel)

    def actor_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.model.parameters() if p.requires_grad)

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.value_head.parameters()) if self.value_head is not None else iter(())

    def _forward(self, model: nn.Module, input_ids, attention_mask, prompt_len: int, temperature: float,
                 want_entropy: bool, want_values: bool) -> PolicyOutput:
        shared = None
        if self.share_prompts and prompt_len >= 2 and not uses_gradient_checkpointing(model):
            shared = shared_prompts(input_ids, attention_mask, prompt_len)
            if shared is None and data_parallel():  # every rank builds the same graph (see data_parallel)
                rows = torch.arange(input_ids.shape[0], device=input_ids.device)
                shared = (rows, rows)
        if shared is None:
            logits, hidden = self._reply_logits(model, input_ids, attention_mask, prompt_len, want_values)
        else:
            logits, hidden = self._reply_logits_shared(model, input_ids, attention_mask, prompt_len, want_values,
                                                       *shared)
        if temperature > 0 and temperature != 1.0:
            logits = logits / temperature
        tokens = input_ids[:, prompt_len:]
        entropy = None
        if want_entropy:
            logprobs, entropy = gather_logprobs(logits, tokens, with_entropy=True)
        else:
            logprobs = gather_logprobs(logits, tokens)
        values = None
        if hidden is not None and self.value_head is not None:
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return PolicyOutput(logprobs=logprobs, entropy=entropy, values=values)

    @staticmethod
    def _reply_logits(model: nn.Module, input_ids, attention_mask, prompt_len: int, want_values: bool):
        """(logits, last hidden states or None) at the positions that predict the reply tokens: one forward pass."""
        keep = input_ids.shape[1] - prompt_len + 1
        kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}  # no LM head on the prompt
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
            output_hidden_states=want_values, use_cache=False, **kwargs,
        )
        hidden = out.hidden_states[-1][:, prompt_len - 1 : -1, :] if want_values else None
        return out.logits[:, -keep:-1, :], hidden

    @staticmethod
    def _reply_logits_shared(model: nn.Module, input_ids, attention_mask, prompt_len: int, want_values: bool,
                             first: torch.Tensor, inverse: torch.Tensor):
        """The same as _reply_logits in two passes: each distinct prompt (but its last token) once, then every row's
        last prompt token and reply on its prompt's cached keys and values, repeated to the rows (differentiably:
        the rows' gradients add up in their shared prompt). The prompt's share of the FLOPs is paid once per prompt
        instead of once per sample."""
        positions = position_ids_from_mask(attention_mask)
        head = prompt_len - 1
        one = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
        cache = model(input_ids=input_ids[first, :head], attention_mask=attention_mask[first, :head],
                      position_ids=positions[first, :head], use_cache=True, **one).past_key_values
        if cache is None or not hasattr(cache, "batch_select_indices"):  # a model without transformers' KV cache
            return Policy._reply_logits(model, input_ids, attention_mask, prompt_len, want_values)
        cache.batch_select_indices(inverse)
        keep = input_ids.shape[1] - head
        kwargs = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
        out = model(input_ids=input_ids[:, head:], attention_mask=attention_mask, position_ids=positions[:, head:],
                    past_key_values=cache, use_cache=True, output_hidden_states=want_values, **kwargs)
        hidden = out.hidden_states[-1][:, :-1, :] if want_values else None
        return out.logits[:, -keep:-1, :], hidden

    def forward(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0,
                want_entropy: bool = True) -> PolicyOutput:
        return self._forward(self.model, input_ids, attention_mask, prompt_len, temperature, want_entropy,
                             self.value_head is not None)

    @torch.no_grad()
    def ref_logprobs(self, input_ids, attention_mask, prompt_len: int, temperature: float = 1.0) -> torch.Tensor:
        if self.is_lora:
            with self.model.disable_adapter():
                return self._forward(self.model, input_ids, attention_mask, prompt_len, temperature, False, False).logprobs
        assert self.ref_model is not None, "full fine-tuning needs a reference model copy"
        return self._forward(self.ref_model, input_ids, attention_mask, prompt_len, temperature, False, False).logprobs

    def generation_model(self) -> nn.Module:
        return self.model

    @torch.no_grad()
    def refresh_reference(self) -> None:
        """The reference becomes the current policy (iterative DPO). Only a full fine-tune has a reference copy; a LoRA
        policy's reference is its base with the adapter off (refused at start-up)."""
        if self.ref_model is None:
            raise ValueError("algo.ref_refresh_steps: a LoRA policy has no reference copy to refresh")
        self.ref_model.load_state_dict(self.model.state_dict())


def build_policy(model: nn.Module, cfg: ModelConfig, value_head: bool) -> Policy:
    """Wraps the loaded causal LM: LoRA via peft (reference = adapter disabled) or full fine-tune (+ frozen copy)."""
    if cfg.lora.enabled:
        peft_cfg = PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_cfg)
        return Policy(model, value_head=value_head, share_prompts=cfg.share_prompts)
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return Policy(model, value_head=value_head, ref_model=ref, share_prompts=cfg.share_prompts)


def count_parameters(module: nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
