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


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # (B, R)
    entropy: Optional[torch.Tensor]  # (B, R)
    values: Optional[torch.Tensor]  # (B, R)


class Policy(nn.Module):
    def __init__(self, model: nn.Module, value_head: bool, ref_model: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.ref_model = ref_model
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
        kwargs = {}
        if accepts_logits_to_keep(model):  # the LM head and its softmax on the response positions only
            kwargs["logits_to_keep"] = input_ids.shape[1] - prompt_len + 1
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask),
            output_hidden_states=want_values, use_cache=False, **kwargs,
        )
        logits = out.logits[:, -(input_ids.shape[1] - prompt_len + 1) : -1, :]
        if temperature > 0 and temperature != 1.0:
            logits = logits / temperature
        tokens = input_ids[:, prompt_len:]
        entropy = None
        if want_entropy:
            logprobs, entropy = gather_logprobs(logits, tokens, with_entropy=True)
        else:
            logprobs = gather_logprobs(logits, tokens)
        values = None
        if want_values and self.value_head is not None:
            hidden = out.hidden_states[-1][:, prompt_len - 1 : -1, :]
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return PolicyOutput(logprobs=logprobs, entropy=entropy, values=values)

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
        return Policy(model, value_head=value_head)
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return Policy(model, value_head=value_head, ref_model=ref)


def count_parameters(module: nn.Module) -> Tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
