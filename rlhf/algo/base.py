"""What an algorithm is: a schema (its config keys) plus how it turns a scored rollout into an update.

Two kinds share the trainer's loop (rollout -> reward -> experience -> update -> sync):
- `PolicyGradient`: an advantage estimator plus a policy loss (PPO, GRPO, Dr. GRPO, DAPO, GSPO, CISPO, RLOO,
  REINFORCE++). The shared machinery (old/reference log-probs, KL, whitening, minibatches, micro-batch accumulation,
  non-finite skipping) is rlhf/algo/step.py; a subclass supplies `advantages` and `policy_loss` and nothing else.
- anything else overrides `make_experience` and `update` itself (online DPO builds preference pairs).

An algorithm registers itself by name (rlhf/algo/registry.py) and its schema becomes the Hydra node
`algo/<name>_schema` that conf/algo/<name>.yaml extends, so a key of another algorithm fails at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple, Type

import torch

from rlhf.algo.advantages import group_advantages, kl_shaped_scores
from rlhf.algo.losses import clipped_policy_loss
from rlhf.algo.step import Experience, SumFn, UpdateHooks, make_experience, update
from rlhf.config import AlgoConfig, range_errors
from rlhf.model.policy import Policy
from rlhf.rollout.base import Rollout

LOSS_AGGS = ("token_mean", "seq_mean", "seq_mean_token_sum_norm")


# ------------------------------------------------------------------------------------------------------------ schemas
@dataclass
class PolicyGradientConfig(AlgoConfig):
    """Keys of every policy-gradient algorithm: KL to the reference, loss aggregation, entropy, importance sampling."""

    entropy_coef: float = 0.0
    # token_mean | seq_mean | seq_mean_token_sum_norm (Dr. GRPO: each reply's token sum / a constant, mean over replies)
    loss_agg: str = "token_mean"
    # seq_mean_token_sum_norm's constant divisor (0: generation.max_new_tokens)
    loss_norm_tokens: int = 0
    whiten_advantages: bool = False
    # KL to the reference policy
    kl_coef: float = 0.05
    kl_estimator: str = "k1"  # k1 | k2 | k3
    kl_in: str = "reward"  # reward (penalty folded into the reward) | loss (term in the policy loss)
    kl_controller: str = "fixed"  # fixed | adaptive
    kl_target: float = 0.1
    kl_horizon: int = 10000
    # Truncated importance sampling between engine and trainer log-probs (0 disables)
    tis_cap: float = 0.0

    def errors(self) -> List[str]:
        errors = super().errors()
        errors += range_errors(self, "algo", positive=["kl_target", "kl_horizon"],
                               non_negative=["entropy_coef", "kl_coef", "tis_cap", "loss_norm_tokens"],
                               choices={"loss_agg": LOSS_AGGS, "kl_estimator": ("k1", "k2", "k3"),
                                        "kl_in": ("reward", "loss"), "kl_controller": ("fixed", "adaptive")})
        return errors


@dataclass
class ClippedConfig(PolicyGradientConfig):
    """The PPO clipped surrogate: symmetric clip range, optional dual clip."""

    clip_eps: float = 0.2
    # dual-clip PPO (Ye et al. 2020): for A < 0 the per-token loss is capped at -A * c; 0 disables, 3 is the usual c
    dual_clip_c: float = 0.0

    def errors(self) -> List[str]:
        errors = super().errors() + range_errors(self, "algo", non_negative=["clip_eps"])
        if self.dual_clip_c != 0 and not self.dual_clip_c > 1:
            errors.append(f"algo.dual_clip_c: must be 0 (off) or > 1 (e.g. 3), got {self.dual_clip_c!r}")
        return errors


# ---------------------------------------------------------------------------------------------------------- algorithms
class Algorithm:
    """One RL algorithm. Subclasses set `name` and `schema` and register with `rlhf.algo.registry.register`."""

    name: ClassVar[str]
    schema: ClassVar[Type[AlgoConfig]]
    needs_critic: ClassVar[bool] = False  # the policy gets a value head (PPO)

    def __init__(self, cfg: AlgoConfig):
        if not isinstance(cfg, self.schema):
            raise TypeError(f"algo: {self.name} needs a {self.schema.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    @property
    def kl_settings(self) -> Tuple[str, float, float, int]:
        """(controller, coef, target, horizon) of the KL controller; no KL term: fixed 0."""
        c = self.cfg
        if not hasattr(c, "kl_coef"):
            return "fixed", 0.0, 1.0, 1
        return c.kl_controller, c.kl_coef, c.kl_target, c.kl_horizon

    # -- hooks the trainer calls, in order
    def shape_scores(self, scores: torch.Tensor, rollout: Rollout, max_new_tokens: int
                     ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Reward shaping that belongs to the algorithm (DAPO's overlong punishment); default: none."""
        return scores, {}

    def group_filter(self) -> Optional[int]:
        """Dynamic sampling: the cap on extra generation rounds to replace groups whose rewards are all equal (None:
        no filtering)."""
        return None

    def make_experience(self, policy: Policy, rollout: Rollout, scores: torch.Tensor, kl_coef: float,
                        temperature: float, device: torch.device, all_sum: Optional[SumFn] = None
                        ) -> Tuple[Experience, Dict[str, float]]:
        raise NotImplementedError

    def update(self, policy: Policy, exp: Experience, kl_coef: float, temperature: float, hooks: UpdateHooks,
               generator: Optional[torch.Generator] = None) -> Dict[str, float]:
        raise NotImplementedError

    def after_update(self, policy: Policy, step: int) -> Dict[str, float]:
        """Called once per training step after the update (online DPO refreshes its reference here)."""
        return {}

    def on_resume(self, policy: Policy, step: int) -> None:
        """Called after a checkpoint at `step` is loaded into the policy."""
        return None


class PolicyGradient(Algorithm):
    """An advantage estimator plus a policy loss; everything else is rlhf/algo/step.py."""

    def advantages(self, scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor, values: Optional[torch.Tensor],
                   group_size: int, kl_coef: float, all_sum: Optional[SumFn]
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(advantages (B, R), returns (B, R) for a critic or None). kl is the per-token KL to the reference (already
        masked); kl_coef the controller's current value, to fold into the reward when algo.kl_in=reward."""
        raise NotImplementedError

    def policy_loss(self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    is_weights: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.cfg
        return clipped_policy_loss(logp, old_logp, advantages, mask, c.clip_eps, c.loss_agg, is_weights,
                                   c.dual_clip_c, c.loss_norm_tokens)

    def extra_loss(self, out, mb: Experience) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """A further loss term from the same forward (PPO's value loss); default none."""
        return None, {}

    def make_experience(self, policy, rollout, scores, kl_coef, temperature, device, all_sum=None):
        return make_experience(policy, rollout, scores, self, kl_coef, temperature, device, all_sum, defer_old=True)

    def update(self, policy, exp, kl_coef, temperature, hooks, generator=None):
        return update(policy, exp, self, kl_coef, temperature, hooks, generator)


class GroupRelative(PolicyGradient):
    """GRPO's estimator: the sequence score (KL-shaped when kl_in=reward) minus its group's mean, over the group's std
    when the schema's scale_by_std is true, broadcast to every response token. GRPO, Dr. GRPO, DAPO, GSPO and CISPO
    share it (each schema has scale_by_std and min_samples_per_prompt = 2)."""

    def advantages(self, scores, mask, kl, values, group_size, kl_coef, all_sum):
        if self.cfg.kl_in == "reward" and kl_coef > 0:
            scores = kl_shaped_scores(scores, kl, mask, kl_coef)
        seq_adv = group_advantages(scores, group_size, scale_by_std=self.cfg.scale_by_std)
        return seq_adv.unsqueeze(1) * mask, None
