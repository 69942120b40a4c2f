"""Online iterative DPO (Xiong et al. 2024; Dong et al. 2024, "RLHF Workflow"): every step samples n replies per prompt
from the current policy, ranks them with the configured reward (rule, reward model or judge), pairs the best with the
worst (and, with pairs_per_prompt > 1, the second best with the second worst, ...), skips ties, and takes DPO steps on
those pairs against the reference policy. The reference stays the initial policy, as in the paper, unless
ref_refresh_steps > 0 makes it the current policy every that many steps (one "iteration").

Shapes stay fixed whatever the rewards: every prompt yields pairs_per_prompt pairs, and a tied pair gets weight 0, so
data-parallel ranks always run the same number of forward/backward passes. minibatch_size and micro_batch_size count
pairs here (global, like every batch knob)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from rlhf.algo.base import Algorithm
from rlhf.algo.registry import register
from rlhf.algo.step import SumFn, UpdateHooks, chunk_slices
from rlhf.config import AlgoConfig, range_errors
from rlhf.model.policy import Policy
from rlhf.rollout.base import Rollout


# ----------------------------------------------------------------------------------------------------------- pure math
def best_vs_worst_pairs(scores: torch.Tensor, group_size: int, pairs_per_prompt: int
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen rows, rejected rows, weight) with pairs_per_prompt pairs per group of group_size consecutive rows.

    Within a group ranked by score (stable: ties keep row order), pair k is rank k vs rank n-1-k. Its weight is 1 when
    the chosen score is strictly higher, else 0 (a tie carries no preference). Needs 2 * pairs_per_prompt <= n."""
    if 2 * pairs_per_prompt > group_size:
        raise ValueError(f"algo.pairs_per_prompt: {pairs_per_prompt} pairs need at least {2 * pairs_per_prompt} "
                         f"samples per prompt, got {group_size}")
    grouped = scores.reshape(-1, group_size).double()
    order = torch.sort(grouped, dim=1, descending=True, stable=True).indices  # (G, n)
    k = torch.arange(pairs_per_prompt)
    best, worst = order[:, k], order[:, group_size - 1 - k]  # (G, pairs)
    offset = (torch.arange(grouped.shape[0]) * group_size).unsqueeze(1)
    weight = (grouped.gather(1, best) > grouped.gather(1, worst)).float()
    return (best + offset).reshape(-1), (worst + offset).reshape(-1), weight.reshape(-1)


def dpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
             ref_rejected_logp: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (Rafailov et al. 2023) and implicit reward margin, from sequence log-probs (sums over tokens).

    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected));
    loss = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin) (eps = label_smoothing, conservative DPO)."""
    margin = beta * ((chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp))
    loss = -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return loss, margin


# ------------------------------------------------------------------------------------------------------------- schema
@dataclass
class OnlineDPOConfig(AlgoConfig):
    name: str = "online_dpo"
    min_samples_per_prompt = 2
    beta: float = 0.1
    label_smoothing: float = 0.0
    pairs_per_prompt: int = 1
    # every this many steps the reference becomes the current policy (0: the reference stays the initial policy)
    ref_refresh_steps: int = 0
    minibatch_size: int = 4  # pairs per optimizer step

    def pairs_per_step(self) -> int:
        return self.prompts_per_step * self.pairs_per_prompt

    def errors(self) -> List[str]:
        errors = range_errors(self, "algo", positive=["lr", "prompts_per_step", "samples_per_prompt", "minibatch_size",
                                                      "epochs", "beta", "pairs_per_prompt"],
                              non_negative=["weight_decay", "max_grad_norm", "warmup_steps", "ref_refresh_steps"])
        if errors:
            return errors
        if not 0.0 <= self.label_smoothing < 0.5:
            errors.append(f"algo.label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if self.samples_per_prompt < 2 * self.pairs_per_prompt:
            errors.append(f"algo.samples_per_prompt: {self.pairs_per_prompt} pairs per prompt need at least "
                          f"{2 * self.pairs_per_prompt} samples per prompt, got {self.samples_per_prompt}")
        if self.pairs_per_step() % self.minibatch_size:
            errors.append(f"algo.minibatch_size: {self.minibatch_size} pairs must divide prompts_per_step * "
                          f"pairs_per_prompt = {self.pairs_per_step()}")
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.minibatch_size % self.micro_batch_size):
            errors.append(f"algo.micro_batch_size: {self.micro_batch_size} must be 0 (= minibatch_size) or divide "
                          f"minibatch_size = {self.minibatch_size}")
        return errors

    def run_errors(self, cfg) -> List[str]:
        if not self.ref_refresh_steps:
            return []
        if cfg.model.lora.enabled:
            return ["algo.ref_refresh_steps: a LoRA policy's reference is its base with the adapter off and cannot be "
                    "refreshed; use model.lora.enabled=false (full fine-tuning keeps a reference copy) or 0"]
        if cfg.save_every and cfg.save_every % self.ref_refresh_steps:
            return [f"algo.ref_refresh_steps: save_every={cfg.save_every} must be a multiple of it, so that a resumed "
                    "run's reference (the policy at the last refresh) is the checkpoint's own policy"]
        return []


# ---------------------------------------------------------------------------------------------------------- algorithm
@dataclass
class PairExperience:
    input_ids: torch.Tensor  # (B, P + R) all sampled rows
    attention_mask: torch.Tensor
    mask: torch.Tensor  # (B, R)
    prompt_len: int
    chosen: torch.Tensor  # (N,) row index of each pair's chosen reply
    rejected: torch.Tensor  # (N,)
    weight: torch.Tensor  # (N,) 1 = a real preference, 0 = a tie (no loss)
    ref_chosen: torch.Tensor  # (N,) reference sequence log-probs
    ref_rejected: torch.Tensor


def _seq_logprobs(policy, ids, att, mask, prompt_len: int, temperature: float) -> torch.Tensor:
    out = policy(ids, att, prompt_len, temperature, want_entropy=False)
    return (out.logprobs * mask).sum(-1)


@register
class OnlineDPO(Algorithm):
    name = "online_dpo"
    schema = OnlineDPOConfig

    @torch.no_grad()
    def make_experience(self, policy: Policy, rollout: Rollout, scores: torch.Tensor, kl_coef: float,
                        temperature: float, device: torch.device, all_sum: Optional[SumFn] = None
                        ) -> Tuple[PairExperience, Dict[str, float]]:
        c = self.cfg
        chosen, rejected, weight = best_vs_worst_pairs(scores.float().cpu(), rollout.group_size, c.pairs_per_prompt)
        ids, att = rollout.input_ids.to(device), rollout.attention_mask.to(device)
        mask = rollout.response_mask.to(device)
        P = rollout.prompt_len
        # reference log-probs of the paired rows only (with pairs_per_prompt < n/2 the others are never trained on);
        # tied pairs too, so every rank runs the same number of forwards
        rows = torch.cat([chosen, rejected]).to(device)
        ref = torch.cat([(policy.ref_logprobs(ids[r], att[r], P, temperature) * mask[r]).sum(-1)
                         for r in (rows[s] for s in chunk_slices(rows.shape[0],
                                                                  2 * (c.micro_batch_size or c.minibatch_size)))])
        chosen, rejected, weight = chosen.to(device), rejected.to(device), weight.to(device)
        n = chosen.shape[0]
        exp = PairExperience(ids, att, mask, P, chosen, rejected, weight, ref[:n], ref[n:])
        n_valid = weight.sum()
        n_total = torch.tensor(float(weight.numel()), device=device)
        gap = ((scores.to(device)[chosen] - scores.to(device)[rejected]) * weight).sum()
        if all_sum is not None:
            n_valid, n_total, gap = all_sum(torch.stack([n_valid, n_total, gap]))
        return exp, {"pair_count": float(n_valid), "tied_pair_frac": float(1 - n_valid / n_total.clamp(min=1)),
                     "pair_score_gap": float(gap / n_valid.clamp(min=1))}

    def update(self, policy, exp: PairExperience, kl_coef: float, temperature: float, hooks: UpdateHooks,
               generator: Optional[torch.Generator] = None) -> Dict[str, float]:
        """epochs passes over the pairs in shuffled minibatches; every chunk's loss is its pairs' weighted loss over
        the minibatch's total weight (global under data parallelism, times the world size because the backend
        averages the ranks' gradients), so the applied gradient is the global minibatch's mean over its real
        (non-tied) pairs. A minibatch with no real pair anywhere is skipped on every rank alike."""
        c = self.cfg
        N = exp.chosen.shape[0]
        sums: Dict[str, float] = {}
        count, skipped, empty = 0, 0, 0
        for _ in range(c.epochs):
            perm = torch.randperm(N, generator=generator).to(exp.chosen.device)
            for s in chunk_slices(N, c.minibatch_size):
                idx = perm[s]
                w_total = exp.weight[idx].sum()
                if hooks.all_sum is not None:
                    w_total = hooks.all_sum(w_total.reshape(1))[0]
                if float(w_total) == 0:
                    empty += 1
                    continue
                chunks = chunk_slices(idx.shape[0], c.micro_batch_size or c.minibatch_size)
                stats = {"dpo_loss": 0.0, "reward_margin": 0.0, "reward_accuracy": 0.0}
                ok = True
                for i, ch in enumerate(chunks):
                    j = idx[ch]
                    rows = torch.cat([exp.chosen[j], exp.rejected[j]])
                    logp = _seq_logprobs(policy, exp.input_ids[rows], exp.attention_mask[rows], exp.mask[rows],
                                         exp.prompt_len, temperature)
                    lc, lr = logp[: j.shape[0]], logp[j.shape[0]:]
                    per_pair, margin = dpo_loss(lc, lr, exp.ref_chosen[j], exp.ref_rejected[j], c.beta,
                                                c.label_smoothing)
                    w = exp.weight[j]
                    loss = (per_pair * w).sum() / w_total  # this chunk's share of the global minibatch mean
                    if not hooks.all_finite(loss):
                        if i > 0:
                            hooks.discard(loss)
                        ok = False
                        break
                    # the backend averages gradients over ranks: scale by world_size so the result is the global mean
                    hooks.backward(loss * hooks.world_size if hooks.all_sum is not None else loss, len(chunks) > 1,
                                   i == len(chunks) - 1)
                    stats["dpo_loss"] += float(loss.detach())
                    stats["reward_margin"] += float((margin.detach() * w).sum() / w_total)
                    stats["reward_accuracy"] += float(((margin.detach() > 0).float() * w).sum() / w_total)
                if not ok:
                    skipped += 1
                    continue
                grad_norm = hooks.step()
                if grad_norm is None:
                    skipped += 1
                    continue
                stats["grad_norm"] = grad_norm
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        result = {k: v / max(count, 1) for k, v in sums.items()}
        if hooks.all_sum is not None and result:  # per-rank sums of a global mean: add the ranks' shares
            keys = ["dpo_loss", "reward_margin", "reward_accuracy"]
            total = hooks.all_sum(torch.tensor([result[k] for k in keys]))
            result.update({k: float(v) for k, v in zip(keys, total)})
        result.update({"skipped_updates": float(skipped), "optimizer_steps": float(count),
                       "empty_minibatches": float(empty)})
        return result

    def on_resume(self, policy: Policy, step: int) -> None:
        k = self.cfg.ref_refresh_steps
        if k and step % k:
            raise ValueError(f"resume: online_dpo refreshes its reference every {k} steps but the checkpoint is at step "
                             f"{step}; resume from a checkpoint at a multiple of algo.ref_refresh_steps")
        if k and step:
            policy.refresh_reference()

    def after_update(self, policy: Policy, step: int) -> Dict[str, float]:
        k = self.cfg.ref_refresh_steps
        if k and step % k == 0:
            policy.refresh_reference()
            return {"ref_refreshed": 1.0}
        return {}
