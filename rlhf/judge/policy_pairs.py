"""On-policy judge/RM training pairs (judge.policy_pairs): the actor's own sampled replies to train-split math prompts,
graded against the train split's reference answers, become preference pairs for a lora_judge / bt_rm trained in the
run, beside its preference dataset.

Why: synthetic_prefs' replies are reference-style solutions; the policy writes otherwise, and a judge trained on the
former alone ranks the policy's replies by their form. Measured (README, "Does the judge rank the policy's own
replies?"): on the embedded model's sampled replies to held-out problems, judge=math_rubric ranked right above wrong
replies of the same problem in 49.5 % of pairs (chance) and preferred wrong replies among those ending on `#### N`;
judge=math_onpolicy (these pairs, LoRA on every layer, 60 steps) in 77.3 %. Training a verifier on the generator's own
samples, labelled by their final answer, is how GSM8K's verifiers were trained (Cobbe et al. 2021); only train-split
answers are read, never the test split's.

A reply is right when its final number matches the reference (flexible exact match: the accuracy signal; the format
is reward.format_bonus's business). Two kinds of pair, both of the policy's own text:
  policy-vs-policy  each wrong reply of a prompt against a right reply of the same prompt (cycled), when the policy
                    found one;
  policy-minimal    each reply that states a number, twice: once with its final answer set to the reference answer
                    (chosen) and once to a wrong one (rejected: the reply's own answer when that is wrong, else a
                    seeded slip of the reference). The two differ in the final number only, so what the judge can
                    learn from them is whether the final number is the reference's.
"""

from __future__ import annotations

import math
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from rlhf.task.math_grading import is_correct, reference_answer, with_final_answer

SUBSET_VS_POLICY = "policy-vs-policy"
SUBSET_MINIMAL = "policy-minimal"
SLIPS = (-10, -2, -1, 1, 2, 10)


def unique(texts: Sequence[str]) -> List[str]:
    """texts without repeats (compared stripped), in first-seen order."""
    seen, out = set(), []
    for t in texts:
        if t.strip() not in seen:
            seen.add(t.strip())
            out.append(t)
    return out


def wrong_value(rng: random.Random, ref: str) -> str:
    """A seeded slip of the reference answer (an integer ± 1, 2 or 10, kept >= 0), or ref + "1" for a non-integer."""
    try:
        value = int(ref)
    except ValueError:
        return ref + "1"
    cands = [value + d for d in SLIPS if value + d >= 0]
    return str(rng.choice(cands))


def minimal_pair(reply: str, answer: str, right: bool, rng: random.Random) -> Optional[Tuple[str, str]]:
    """(reply with the reference answer, reply with a wrong answer), or None when the reply states no number."""
    ref = reference_answer(answer)
    fixed = with_final_answer(reply, ref)
    if fixed is None or not is_correct(fixed, answer, "flexible"):
        return None
    broken = with_final_answer(reply, wrong_value(rng, ref)) if right else reply
    if broken is None or is_correct(broken, answer, "flexible"):
        return None
    return fixed, broken


def policy_pairs(samples: Sequence[Tuple[Dict[str, Any], Sequence[str]]], seed: int = 0) -> List[Dict[str, Any]]:
    """Preference rows (prompt, chosen, rejected, subset, answer) from (prompt meta, sampled replies) groups.

    meta is a math TaskItem's (``judge_prompt``, ``answer``); groups without an answer (chat prompts) give no pair.
    Repeated replies count once."""
    rng = random.Random(f"policy_pairs|{seed}")
    rows: List[Dict[str, Any]] = []
    for meta, replies in samples:
        answer = meta.get("answer")
        if not answer:
            continue
        answer = str(answer)
        row = {"prompt": str(meta["judge_prompt"]), "answer": answer}
        distinct = unique(replies)
        graded = [(r, is_correct(r, answer, "flexible")) for r in distinct]
        right = [r for r, ok in graded if ok]
        if right:
            rows += [{**row, "chosen": right[j % len(right)], "rejected": bad, "subset": SUBSET_VS_POLICY}
                     for j, bad in enumerate(r for r, ok in graded if not ok)]
        for reply, ok in graded:
            pair = minimal_pair(reply, answer, ok, rng)
            if pair is not None:
                rows.append({**row, "chosen": pair[0], "rejected": pair[1], "subset": SUBSET_MINIMAL})
    return rows


def mix_in(base: Sequence[Dict[str, Any]], extra: Sequence[Dict[str, Any]], fraction: float) -> List[Dict[str, Any]]:
    """base + extra, the extra rows repeated (whole copies, then the first rows of one more) so that they make up
    ``fraction`` of the result: training batches are drawn uniformly over rows, so that is their share of the draws.
    A fraction of 1 keeps the extra rows only."""
    base, extra = list(base), list(extra)
    if not extra:
        return base
    if fraction >= 1.0 or not base:
        return extra
    want = math.ceil(fraction * len(base) / (1.0 - fraction))  # extra rows among len(base) + want
    copies = [extra[i % len(extra)] for i in range(max(want, len(extra)))]
    return base + copies


def ranking(scores: torch.Tensor, right: torch.Tensor, groups: List[int]) -> Dict[str, float]:
    """How scores rank graded replies, ties counting 1/2: group_accuracy over every (right, wrong) pair within a group
    id (replies to one prompt: what a group-relative advantage sees), auc over all (right, wrong) pairs; nan without a
    pair. task=judge_on_policy reports both; the judge reward logs group_accuracy per step."""
    def frac(pairs_mask: torch.Tensor) -> Tuple[float, int]:
        diff = scores[:, None] - scores[None, :]  # (i right, j wrong)
        mask = pairs_mask & right[:, None] & ~right[None, :]
        n = int(mask.sum())
        won = float((diff[mask] > 0).sum()) + 0.5 * float((diff[mask] == 0).sum())
        return (won / n if n else float("nan")), n

    g = torch.tensor(groups)
    group_acc, group_pairs = frac(g[:, None] == g[None, :])
    auc, pairs = frac(torch.ones(len(groups), len(groups), dtype=torch.bool))
    return {"group_accuracy": group_acc, "group_pairs": float(group_pairs), "auc": auc, "pairs": float(pairs)}
