"""reward=routed ("Ask a Strong LLM Judge when Your Reward Model is Uncertain", arXiv 2510.20369): a fast BT reward
model scores every reply; in each prompt's group every pair of replies gets P(i better than j) = sigmoid(r_i - r_j);
the pairs the RM is least sure of (``reward.route_by``: margin = probability near 1/2, ensemble = disagreement of
``reward.ensemble`` heads, random = the baseline), up to ``reward.route_budget`` of the batch's pairs, are asked to
the pairwise LLM judge (``reward.route_judge``) instead. Each reply's reward is its mean win probability in its group,
then ``reward.scale * win + reward.shift``. The judge-call rate is logged every step (reward/judge_call_rate).

The RM is the run's bt_rm (``reward.checkpoint``, or trained first and saved to ``<run_dir>/rm``); the judge is a
rubric_judge or lora_judge in pairwise mode (``reward.judge_checkpoint``, or a LoRA judge trained first into
``<run_dir>/judge``), on the actor's base where judge.share_base allows. Held-out chat metrics (score_replies) use
the RM's score alone: a single reply has no group to be compared in.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Dict, List

import torch

from rlhf.config import Config
from rlhf.judge.routing import group_pairs, pair_probs, route_mask, uncertainty, win_rates
from rlhf.reward.base import RewardOutput
from rlhf.reward.judge_reward import JudgeReward, build_judge_reward
from rlhf.rollout.base import Rollout
from rlhf.task.math_grading import is_correct

log = logging.getLogger(__name__)


def member_scores(rm: Any, prompts: List[str], responses: List[str], batch_size: int) -> torch.Tensor:
    """(K, B) scores: an ensemble's members, or a single RM as K = 1."""
    if hasattr(rm, "member_scores"):
        return rm.member_scores(prompts, responses, batch_size)
    return rm.score(prompts, responses, batch_size=batch_size).float()[None]


class RoutedReward:
    def __init__(self, cfg: Config, rm: JudgeReward, judge: JudgeReward, seed: int = 0):
        self.cfg, self.rm, self.judge = cfg, rm, judge
        self.gen = torch.Generator().manual_seed(seed)  # random routing only
        self.summary: Dict[str, str] = {**rm.summary, **judge.summary}
        self.heldout_accuracy = judge.heldout_accuracy  # the judge's (the RM's is in summary and metrics)
        self.calls = 0

    def score(self, rollout: Rollout) -> RewardOutput:
        metas = rollout.meta_per_sample()
        responses = list(rollout.responses)
        b = len(responses)
        rm_prompts = [self.rm.judge_prompt_of(m) or rollout.prompts[rollout.prompt_index(i)]
                      for i, m in enumerate(metas)]
        scores = member_scores(self.rm.scorer, rm_prompts, responses, self.cfg.judge.eval_batch_size)
        pairs = group_pairs(b, rollout.group_size)
        p, spread = pair_probs(scores, pairs)
        by = self.cfg.reward.route_by
        unc = None if by == "random" else uncertainty(p, spread, by)
        mask = route_mask(unc, len(pairs), self.cfg.reward.route_budget, self.gen)
        metrics: Dict[str, float] = {"judge_call_rate": float(mask.float().mean()), "pairs": float(len(pairs)),
                                     "rm_score_mean": float(scores.mean()),
                                     "rm_pair_uncertainty": float((0.5 - (p - 0.5).abs()).mean())}
        if scores.shape[0] > 1:
            metrics["ensemble_pair_std"] = float(spread.mean())
        if bool(mask.any()):
            routed = pairs[mask]
            jp = [self.judge.judge_prompt_of(metas[int(i)]) or rollout.prompts[rollout.prompt_index(int(i))]
                  for i in routed[:, 0]]
            rubrics = [metas[int(i)].get("rubric") for i in routed[:, 0]]  # the item's own rubric, if any
            judged = self.judge.scorer.prob_first_better(jp, [responses[int(i)] for i in routed[:, 0]],
                                                         [responses[int(j)] for j in routed[:, 1]],
                                                         rubrics=rubrics if any(rubrics) else None).float().cpu()
            metrics["rm_judge_agreement"] = float(((p[mask] > 0.5) == (judged > 0.5)).float().mean())
            p = p.clone()
            p[mask] = judged
            self.calls += int(mask.sum())
        win = win_rates(p, pairs, b)
        rewards = (win * self.cfg.reward.scale + self.cfg.reward.shift).to(torch.float32)
        metrics["win_rate_mean"] = float(win.mean())
        correct = None
        if metas and all(m.get("answer") for m in metas):  # math: EM beside the reward, so hacking shows
            correct = torch.tensor([is_correct(r, str(m["answer"]), "flexible") for r, m in zip(responses, metas)],
                                   dtype=torch.bool)
        return RewardOutput(rewards=rewards, metrics=metrics, correct=correct)

    def score_replies(self, metas: List[Dict[str, Any]], replies: List[str]) -> torch.Tensor:
        return self.rm.score_replies(metas, replies)


def build_routed_reward(cfg: Config, context: Any) -> RoutedReward:
    """The RM (reward.checkpoint; else trained into <run_dir>/rm) and the pairwise judge (reward.judge_checkpoint;
    else a rubric judge, or a LoRA judge trained into <run_dir>/judge)."""
    rm_cfg = replace(cfg, reward=replace(cfg.reward, name="bt_rm"))
    judge_cfg = replace(cfg, reward=replace(cfg.reward, name=cfg.reward.route_judge,
                                            checkpoint=cfg.reward.judge_checkpoint, judge_signal="pairwise",
                                            robust="none", ensemble=0),
                        judge=replace(cfg.judge, mode="pairwise"))
    rm = build_judge_reward(rm_cfg, context, name="rm")
    judge = build_judge_reward(judge_cfg, context, name="judge")
    return RoutedReward(cfg, rm, judge, cfg.seed)
