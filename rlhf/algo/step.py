"""The policy-gradient step every estimator + loss pair shares: experience from a scored rollout, then minibatch
updates.

An algorithm (rlhf/algo/base.py `PolicyGradient`) supplies only `advantages(...)` and `policy_loss(...)` (and PPO its
value loss through `extra_loss`); this module does the rest: old and reference log-probs, the KL, whitening, shuffled
minibatches, micro-batch accumulation, the KL-in-loss and entropy terms, non-finite skipping. How the update is applied
(optimizer, accumulation, clipping, ranks) is a training backend's (`UpdateHooks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import torch

from rlhf.algo.advantages import global_masked_mean, masked_mean, masked_whiten
from rlhf.algo.kl import kl_estimate
from rlhf.algo.losses import aggregate, truncated_is_weights
from rlhf.config import AlgoConfig
from rlhf.model.policy import Policy, shared_prompts
from rlhf.rollout.base import Rollout


@dataclass
class Experience:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # (B, R) response tokens
    old_logprobs: Optional[torch.Tensor]  # None: deferred to the update's first minibatch (`make_experience`)
    ref_logprobs: Optional[torch.Tensor]  # None: no KL term anywhere
    advantages: torch.Tensor  # (B, R)
    returns: Optional[torch.Tensor]
    old_values: Optional[torch.Tensor]
    engine_logprobs: Optional[torch.Tensor]
    prompt_len: int
    # metrics that need the old log-probs, measured by `update` when they were deferred (the trainer logs them)
    late_metrics: Dict[str, float] = field(default_factory=dict)

    def select(self, idx: torch.Tensor) -> "Experience":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Experience(
            input_ids=self.input_ids[idx], attention_mask=self.attention_mask[idx], mask=self.mask[idx],
            old_logprobs=pick(self.old_logprobs), ref_logprobs=pick(self.ref_logprobs), advantages=self.advantages[idx],
            returns=pick(self.returns), old_values=pick(self.old_values), engine_logprobs=pick(self.engine_logprobs),
            prompt_len=self.prompt_len,
        )


def minibatch_order(exp: "Experience", by: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The rows in the order the update's minibatches take them: shuffled samples (algo.minibatch_by=sample), or
    shuffled prompts with each prompt's samples next to each other, in shuffled order (prompt)."""
    B = exp.input_ids.shape[0]
    perm = torch.randperm(B, generator=generator)
    shared = shared_prompts(exp.input_ids, exp.attention_mask, exp.prompt_len) if by == "prompt" else None
    if shared is None:
        return perm
    prompt_of = shared[1].cpu()
    prompt_rank = torch.randperm(int(prompt_of.max()) + 1, generator=generator)
    return perm[torch.argsort(prompt_rank[prompt_of[perm]], stable=True)]


def chunk_slices(n: int, size: int) -> List[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def micro_size(cfg: AlgoConfig) -> int:
    """Samples per forward (and backward) pass: algo.micro_batch_size, 0 meaning the whole minibatch."""
    return cfg.micro_batch_size or cfg.minibatch_size


SumFn = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over data-parallel ranks


class Estimator(Protocol):
    """What this module needs from an algorithm (rlhf.algo.base.PolicyGradient implements it)."""

    cfg: Any  # its schema: a PolicyGradientConfig
    needs_critic: bool  # the policy has a value head (PPO)

    def advantages(self, scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor, values: Optional[torch.Tensor],
                   group_size: int, kl_coef: float, all_sum: Optional[SumFn]
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]: ...

    def policy_loss(self, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    is_weights: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]: ...

    def extra_loss(self, out: Any, mb: "Experience") -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]: ...

# minibatch_loss stats that are token means whatever algo.loss_agg is (the rest follow loss_agg)
TOKEN_MEAN_STATS = ("clip_frac", "approx_kl", "value_clip_frac", "dual_clip_frac")


def micro_weights(mask: torch.Tensor, chunks: List[slice], loss_agg: str, all_sum: Optional[SumFn] = None,
                  world_size: int = 1) -> Tuple[List[float], List[float]]:
    """Weights that make the micro-batch losses (and stats) add up to the whole minibatch's: (loss_agg, token_mean).

    A micro-batch's loss is `aggregate` over its own rows: a mean over its response tokens (token_mean) or over its
    non-empty sequences (seq_mean). Weighting it by its share of the minibatch's tokens (resp. non-empty sequences)
    gives exactly the minibatch's mean, hence the same gradient. One chunk on one process: weight 1.

    Data parallel (all_sum sums over ranks, whose gradients the engine then averages): the share is of the global
    minibatch times world_size, so the averaged gradient is the global token (or sequence) mean, not a mean of
    per-rank means that would over-weight the tokens of ranks with shorter responses.
    """
    if len(chunks) == 1 and all_sum is None:
        return [1.0], [1.0]
    tokens = mask.sum(-1).float()
    seqs = (tokens > 0).float()
    totals = torch.stack([tokens.sum(), seqs.sum()])
    if all_sum is not None:
        totals = all_sum(totals) / world_size
    totals = totals.cpu().clamp(min=1e-12)
    tokens, seqs = tokens.cpu(), seqs.cpu()
    tok_w = [float(tokens[c].sum() / totals[0]) for c in chunks]
    seq_w = [float(seqs[c].sum() / totals[1]) for c in chunks]
    return (tok_w if loss_agg == "token_mean" else seq_w), tok_w


@torch.no_grad()
def compute_advantages(algo: Estimator, scores: torch.Tensor, mask: torch.Tensor, old_logprobs: Optional[torch.Tensor],
                       ref_logprobs: Optional[torch.Tensor], values: Optional[torch.Tensor], group_size: int,
                       kl_coef: float, all_sum: Optional[SumFn] = None):
    """Returns (advantages (B,R), returns (B,R) or None, per-token kl (B,R)): the algorithm's estimator between the
    shared steps (per-token KL before, optional advantage whitening over the global batch after). The KL is zero
    when either log-prob is None (no reference pass, or old log-probs deferred: then no KL is folded in anyway)."""
    cfg = algo.cfg
    if old_logprobs is None or ref_logprobs is None:
        kl = torch.zeros_like(mask, dtype=torch.float32)
    else:
        kl = kl_estimate(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
    advantages, returns = algo.advantages(scores, mask, kl, values, group_size, kl_coef, all_sum)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask, all_sum=all_sum)
    return advantages, returns, kl


def token_mean(x: torch.Tensor, mask: torch.Tensor, all_sum: Optional[SumFn] = None) -> float:
    """A token mean over the global batch (the same on every rank under data parallelism)."""
    return float(masked_mean(x, mask) if all_sum is None else global_masked_mean(x, mask, all_sum)[0])


def can_defer_old_logprobs(cfg: Any, kl_coef: float, has_values: bool) -> bool:
    """Whether the advantages can be computed without the old log-probs, so that their forward pass can be deferred to
    the update (`update` fills them: the first minibatch's rows from its own forward, which runs on the unchanged
    rollout policy, the other rows by one no-grad pass before the first optimizer step). True unless a value head,
    a KL penalty folded into the reward, or an adaptive KL controller (which reads the KL before the update) needs
    them first."""
    kl_in_reward = getattr(cfg, "kl_in", "reward") == "reward" and kl_coef > 0
    return not has_values and not kl_in_reward and cfg.kl_controller == "fixed"


def old_logprob_metrics(old_logprobs: torch.Tensor, ref_logprobs: Optional[torch.Tensor], mask: torch.Tensor,
                        engine_lp: Optional[torch.Tensor], kl_estimator: str,
                        all_sum: Optional[SumFn] = None) -> Dict[str, float]:
    """The KL to the reference (NaN when it was not measured) and the engine-vs-trainer log-prob gap."""
    metrics: Dict[str, float] = {"kl": float("nan"), "kl_per_token": float("nan")}
    if ref_logprobs is not None:
        kl = kl_estimate(old_logprobs, ref_logprobs, kl_estimator) * mask
        # per-sequence KL, summed over tokens, averaged over sequences
        metrics.update({"kl": float(kl.sum(-1).mean()), "kl_per_token": token_mean(kl, mask, all_sum)})
    if engine_lp is not None:
        diff = (old_logprobs - engine_lp).abs()
        metrics["engine_logprob_diff_mean"] = token_mean(diff, mask, all_sum)
        metrics["engine_logprob_diff_max"] = float((diff * mask).max())
    return metrics


@torch.no_grad()
def make_experience(policy: Policy, rollout: Rollout, scores: torch.Tensor, algo: Estimator, kl_coef: float,
                    temperature: float, device: torch.device,
                    all_sum: Optional[SumFn] = None, defer_old: bool = False) -> tuple[Experience, Dict[str, float]]:
    """Old log-probs (+ values, reference log-probs) and advantages for one scored rollout.

    all_sum (data parallel: sums over ranks) makes whitening use the global batch's statistics. defer_old: leave the
    old log-probs to `update` where `can_defer_old_logprobs` allows it (one forward pass over the batch fewer for the
    first minibatch; TRL skips them the same way when there is a single optimizer step per rollout); the KL and
    engine-gap metrics then come back in `exp.late_metrics` after the update."""
    cfg = algo.cfg
    ids = rollout.input_ids.to(device)
    att = rollout.attention_mask.to(device)
    mask = rollout.response_mask.to(device)
    P, B = rollout.prompt_len, ids.shape[0]
    # with no KL term anywhere the reference forward is skipped (a third of this phase); KL is then not measured
    need_ref = kl_coef > 0 or cfg.kl_controller == "adaptive"
    # the policy has a value head exactly when the algorithm needs a critic (Trainer builds it so)
    defer = defer_old and can_defer_old_logprobs(cfg, kl_coef, algo.needs_critic)
    old_lp, ref_lp, vals = [], [], []
    for s in chunk_slices(B, micro_size(cfg)):
        if not defer:
            out = policy(ids[s], att[s], P, temperature, want_entropy=False)
            old_lp.append(out.logprobs)
            if out.values is not None:
                vals.append(out.values)
        if need_ref:
            ref_lp.append(policy.ref_logprobs(ids[s], att[s], P, temperature))
    old_logprobs = None if defer else torch.cat(old_lp)
    ref_logprobs = torch.cat(ref_lp) if need_ref else None
    values = torch.cat(vals) * mask if vals else None
    scores = scores.to(device).float()
    advantages, returns, _ = compute_advantages(
        algo, scores, mask, old_logprobs, ref_logprobs, values, rollout.group_size, kl_coef, all_sum
    )
    engine_lp = rollout.engine_logprobs.to(device) if rollout.engine_logprobs is not None else None
    metrics = {"advantage_mean": token_mean(advantages, mask, all_sum)}
    if values is not None:
        metrics["value_mean"] = token_mean(values, mask, all_sum)
    if old_logprobs is not None:
        metrics.update(old_logprob_metrics(old_logprobs, ref_logprobs, mask, engine_lp, cfg.kl_estimator, all_sum))
    exp = Experience(ids, att, mask, old_logprobs, ref_logprobs, advantages, returns, values, engine_lp, P)
    return exp, metrics


def minibatch_loss(policy: Policy, mb: Experience, algo: Estimator, kl_coef: float, temperature: float):
    """(loss, stats, old log-probs): with mb.old_logprobs deferred (None) this forward runs on the rollout policy
    itself, so its own detached log-probs are the old ones (ratio 1) and are returned for `update` to keep."""
    cfg = algo.cfg
    out = policy(mb.input_ids, mb.attention_mask, mb.prompt_len, temperature, want_entropy=True)
    old_logprobs = mb.old_logprobs if mb.old_logprobs is not None else out.logprobs.detach()
    is_w = None
    if cfg.tis_cap > 0 and mb.engine_logprobs is not None:
        is_w = truncated_is_weights(old_logprobs, mb.engine_logprobs, cfg.tis_cap)
    pg_loss, pg_stats = algo.policy_loss(out.logprobs, old_logprobs, mb.advantages, mb.mask, is_w)
    loss = pg_loss
    stats = {"policy_loss": pg_loss.detach(), **pg_stats}
    if cfg.kl_in == "loss" and kl_coef > 0:
        kl_loss = aggregate(kl_estimate(out.logprobs, mb.ref_logprobs, cfg.kl_estimator), mb.mask, cfg.loss_agg,
                            cfg.loss_norm_tokens)
        loss = loss + kl_coef * kl_loss
        stats["kl_loss"] = kl_loss.detach()
    entropy = aggregate(out.entropy, mb.mask, cfg.loss_agg, cfg.loss_norm_tokens)
    stats["entropy"] = entropy.detach()
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * entropy
    extra, extra_stats = algo.extra_loss(out, mb)
    if extra is not None:
        loss = loss + extra
        stats.update(extra_stats)
    stats["loss"] = loss.detach()
    return loss, stats, old_logprobs


class UpdateHooks(Protocol):
    """How `update` trains, supplied by a training backend (rlhf/backend/): the algorithm never sees the optimizer,
    the distributed setup or the process group."""

    all_sum: Optional[SumFn]  # sums a tensor over data-parallel ranks (None: one process)
    world_size: int

    def backward(self, loss: torch.Tensor, accumulate: bool, is_last: bool) -> None:
        """Backpropagate one chunk's (weighted) loss; accumulate: the minibatch has several chunks, is_last: this is
        its last (the gradient-accumulation boundary)."""

    def discard(self, loss: torch.Tensor) -> None:
        """Drop the gradients accumulated so far in this minibatch (a later chunk's loss was not finite)."""

    def step(self) -> Optional[float]:
        """Clip and apply the accumulated gradient: its norm, or None when the step was skipped (non-finite)."""

    def all_finite(self, t: torch.Tensor) -> bool:
        """Whether t is finite on every rank (the skip decision is taken together)."""


def update(policy: Policy, exp: Experience, algo: Estimator, kl_coef: float, temperature: float,
           hooks: UpdateHooks, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
    """`epochs` passes of shuffled minibatches, one optimizer step each; a minibatch whose loss or gradient is not
    finite is skipped.

    Each minibatch runs as forward/backward passes over chunks of algo.micro_batch_size samples whose gradients are
    accumulated; every chunk's loss is weighted by its share of the minibatch (micro_weights, over the global minibatch
    under data parallelism), so the accumulated gradient, and every returned stat, is the whole minibatch's.
    Returns mean stats plus `skipped_updates`, `optimizer_steps` and `grad_norm`.
    """
    cfg = algo.cfg
    B = exp.input_ids.shape[0]
    sums: Dict[str, float] = {}
    count, skipped = 0, 0
    deferred = exp.old_logprobs is None
    if deferred:  # filled row by row: the first minibatch's own forward, then `fill_old` before the first step
        exp.old_logprobs = torch.full(exp.mask.shape, float("nan"), device=exp.mask.device)
        have = torch.zeros(B, dtype=torch.bool, device=exp.mask.device)

    def fill_old() -> None:
        rows = (~have).nonzero().squeeze(-1)
        with torch.no_grad():
            for s in chunk_slices(len(rows), micro_size(cfg)):
                r = rows[s]
                out = policy(exp.input_ids[r], exp.attention_mask[r], exp.prompt_len, temperature, want_entropy=False)
                exp.old_logprobs[r] = out.logprobs
        have[:] = True
        exp.late_metrics = old_logprob_metrics(exp.old_logprobs, exp.ref_logprobs, exp.mask, exp.engine_logprobs,
                                               cfg.kl_estimator, hooks.all_sum)

    for _ in range(cfg.epochs):
        perm = minibatch_order(exp, cfg.minibatch_by, generator)
        for s in chunk_slices(B, cfg.minibatch_size):
            rows = perm[s].to(exp.input_ids.device)
            mb = exp.select(rows)
            if deferred:
                mb.old_logprobs = None  # this minibatch runs before any optimizer step: its forward gives them
            chunks = chunk_slices(mb.input_ids.shape[0], micro_size(cfg))
            weights, token_weights = micro_weights(mb.mask, chunks, cfg.loss_agg, hooks.all_sum, hooks.world_size)
            weighted = len(chunks) > 1 or hooks.all_sum is not None
            stats: Dict[str, torch.Tensor] = {}
            ok = True
            for i, (c, w, tw) in enumerate(zip(chunks, weights, token_weights)):
                mloss, mstats, old = minibatch_loss(policy, mb.select(c) if len(chunks) > 1 else mb, algo, kl_coef,
                                                    temperature)
                if deferred:
                    exp.old_logprobs[rows[c]] = old
                    have[rows[c]] = True
                if not hooks.all_finite(mloss):
                    if i > 0:
                        hooks.discard(mloss)
                    ok = False
                    break
                for k, v in mstats.items():
                    v = v * (tw if k in TOKEN_MEAN_STATS else w) if weighted else v
                    stats[k] = stats[k] + v if k in stats else v
                hooks.backward(mloss * w if weighted else mloss, len(chunks) > 1, i == len(chunks) - 1)
                del mloss
            if deferred:  # before the weights move: the old log-probs of every other row
                fill_old()
                deferred = False
            if not ok:
                skipped += 1
                continue
            grad_norm = hooks.step()
            if grad_norm is None:
                skipped += 1
                continue
            stats["grad_norm"] = torch.tensor(grad_norm)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
    result = {k: v / max(count, 1) for k, v in sums.items()}
    result["skipped_updates"] = float(skipped)
    result["optimizer_steps"] = float(count)
    return result
