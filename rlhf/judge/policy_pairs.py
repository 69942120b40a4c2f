"""On-policy judge/RM training pairs (judge.policy_pairs): the actor's own sampled replies to train-split math prompts,
graded against the train split's reference answers, become preference pairs for a lora_judge / bt_rm trained in the
run, beside its preference dataset.

Why: synthetic_prefs' wrong replies are the reference solution with one slip; the policy's wrong replies look like
nothing of that kind ("11 + 48 = 59 ... #### 58", "#### 2"), and a judge that only saw the former pays the latter
almost as much as a right answer, which PPO then optimises. Training a verifier on the generator's own samples,
labelled by their final answer, is how GSM8K's verifiers were trained (Cobbe et al. 2021); only train-split answers
are read, never the test split's.

A reply is right when its final number matches the reference (flexible exact match: the accuracy signal; the format
of the `#### N` line is reward.format_bonus's business). Each wrong reply of a prompt is the rejected side of one pair;
its chosen side is a right reply of the same prompt when the policy found one (cycled), else the reference solution.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

from rlhf.task.math_grading import is_correct, reference_solution

SUBSET_VS_POLICY = "policy-vs-policy"  # chosen: a right reply of the policy itself
SUBSET_VS_REFERENCE = "policy-vs-reference"  # chosen: the train split's reference solution


def unique(texts: Sequence[str]) -> List[str]:
    """texts without repeats (compared stripped), in first-seen order."""
    seen, out = set(), []
    for t in texts:
        if t.strip() not in seen:
            seen.add(t.strip())
            out.append(t)
    return out


def policy_pairs(samples: Sequence[Tuple[Dict[str, Any], Sequence[str]]]) -> List[Dict[str, Any]]:
    """Preference rows (prompt, chosen, rejected, subset, answer) from (prompt meta, sampled replies) groups.

    meta is a math TaskItem's (``judge_prompt``, ``answer``); groups without an answer (chat prompts) or without a
    wrong reply give no pair. Repeated replies count once."""
    rows: List[Dict[str, Any]] = []
    for meta, replies in samples:
        answer = meta.get("answer")
        if not answer:
            continue
        distinct = unique(replies)
        right = [r for r in distinct if is_correct(r, str(answer), "flexible")]
        wrong = [r for r in distinct if not is_correct(r, str(answer), "flexible")]
        for j, bad in enumerate(wrong):
            good = right[j % len(right)] if right else reference_solution(str(answer))
            rows.append({"prompt": str(meta["judge_prompt"]), "chosen": good, "rejected": bad, "answer": str(answer),
                         "subset": SUBSET_VS_POLICY if right else SUBSET_VS_REFERENCE})
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
