"""REINFORCE++ (Hu 2025): no critic and no group baseline. Per-token rewards carry the KL penalty at every token and the
sequence score on the last; each token's return is the (discounted) sum of the rewards after it; the returns are
whitened over the whole global batch (not per prompt group), then trained with the PPO clipped surrogate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from rlhf.algo.advantages import masked_whiten, token_rewards
from rlhf.algo.base import ClippedConfig, PolicyGradient
from rlhf.algo.registry import register
from rlhf.config import range_errors


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over the response tokens (mask 1); padded positions get 0 and pass nothing back."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


@dataclass
class ReinforcePPConfig(ClippedConfig):
    name: str = "reinforce_pp"
    gamma: float = 1.0
    kl_coef: float = 0.01
    kl_estimator: str = "k1"
    kl_in: str = "reward"

    def errors(self) -> List[str]:
        errors = super().errors() + range_errors(self, "algo", unit=["gamma"])
        if self.whiten_advantages:
            errors.append("algo.whiten_advantages: reinforce_pp whitens its returns over the global batch already; "
                          "set it to false")
        return errors


@register
class ReinforcePP(PolicyGradient):
    name = "reinforce_pp"
    schema = ReinforcePPConfig

    def advantages(self, scores, mask, kl, values, group_size, kl_coef, all_sum):
        penalty = kl_coef if self.cfg.kl_in == "reward" else 0.0
        returns = discounted_returns(token_rewards(scores, kl, mask, penalty), mask, self.cfg.gamma)
        return masked_whiten(returns, mask, all_sum=all_sum), None
