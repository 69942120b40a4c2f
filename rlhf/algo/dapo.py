"""DAPO (Yu et al. 2025): GRPO's group advantages with four changes.
- Clip-higher: the ratio is clipped to [1 - clip_low, 1 + clip_high] with clip_high > clip_low, so unlikely tokens
  whose probability should grow are not stopped as early (entropy collapse).
- Token-level loss: the mean over all tokens of the batch (loss_agg=token_mean), not per-reply means.
- Dynamic sampling: groups whose rewards are all equal carry no gradient; they are replaced by newly sampled prompts,
  up to max_sampling_rounds extra generation rounds per step (the trainer's refill loop; filtered_group_frac logged).
- Overlong soft punishment: a reply longer than max_new_tokens - overlong_buffer loses up to overlong_penalty,
  linearly in the tokens it spends inside the buffer (a truncated reply loses all of it).
No KL term by default (kl_coef 0), as in the paper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from rlhf.algo.base import GroupRelative, PolicyGradientConfig
from rlhf.algo.losses import clipped_policy_loss
from rlhf.algo.registry import register
from rlhf.config import range_errors


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment per reply: 0 up to max_len - buffer tokens, then falling linearly to -factor at
    max_len (and below it past max_len). buffer 0 disables (all zeros)."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    excess = lengths.float() - (max_len - buffer)
    return (-excess / buffer * factor).clamp(max=0.0)


@dataclass
class DAPOConfig(PolicyGradientConfig):
    name: str = "dapo"
    min_samples_per_prompt = 2
    scale_by_std: bool = True
    clip_low: float = 0.2
    clip_high: float = 0.28
    # dual-clip cap for A < 0 (0 disables; > 1 when on)
    dual_clip_c: float = 0.0
    loss_agg: str = "token_mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in: str = "loss"
    # dynamic sampling: refill groups whose rewards are all equal, at most this many extra rounds a step (0: off)
    max_sampling_rounds: int = 3
    # overlong soft punishment: buffer length in tokens before generation.max_new_tokens (0: off) and its size
    overlong_buffer: int = 16
    overlong_penalty: float = 1.0

    def errors(self) -> List[str]:
        errors = super().errors() + range_errors(
            self, "algo", non_negative=["clip_low", "clip_high", "max_sampling_rounds", "overlong_buffer",
                                        "overlong_penalty"])
        if self.dual_clip_c != 0 and not self.dual_clip_c > 1:
            errors.append(f"algo.dual_clip_c: must be 0 (off) or > 1 (e.g. 3), got {self.dual_clip_c!r}")
        return errors

    def run_errors(self, cfg) -> List[str]:
        if self.overlong_buffer and self.overlong_buffer >= cfg.generation.max_new_tokens:
            return [f"algo.overlong_buffer: {self.overlong_buffer} must be below generation.max_new_tokens = "
                    f"{cfg.generation.max_new_tokens} (or 0 to turn the overlong punishment off)"]
        return []


@register
class DAPO(GroupRelative):
    name = "dapo"
    schema = DAPOConfig

    def shape_scores(self, scores, rollout, max_new_tokens):
        c = self.cfg
        if c.overlong_buffer <= 0:
            return scores, {}
        pen = overlong_penalty(rollout.response_lengths, max_new_tokens, c.overlong_buffer, c.overlong_penalty)
        return scores + pen.to(scores.dtype), {"overlong_penalty_mean": float(pen.mean()),
                                               "overlong_frac": float((pen < 0).float().mean())}

    def group_filter(self):
        return self.cfg.max_sampling_rounds if self.cfg.max_sampling_rounds > 0 else None

    def policy_loss(self, logp, old_logp, advantages, mask, is_weights):
        c = self.cfg
        return clipped_policy_loss(logp, old_logp, advantages, mask, c.clip_low, c.loss_agg, is_weights,
                                   c.dual_clip_c, c.loss_norm_tokens, clip_high=c.clip_high)
