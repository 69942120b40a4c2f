"""task=judge_robustness: can a reward source be fooled by a reply with no content?

    python -m rlhf.evaluate task=judge_robustness reward=<exact_match|bt_rm|rubric_judge|lora_judge> limit=60 \
        output=robust.json

For every test pair of the reward's preference source (math runs: synthetic_prefs, whose rows carry the question,
its answer, a real correct reply and a real flawed one) the reward the RL actor would get (`score_replies`, the same
path as training, affine map included) is computed for the correct reply, the flawed reply and every PROBE_KEYS
reply. A master key is a **false positive** on an item when it scores at least as high as the real correct reply
(the strict reading: the reward cannot tell an empty answer from a right one); `beats_flawed` is the weaker rate of
scoring at least as high as the real flawed reply. Reported per key and averaged over keys.
"""

from __future__ import annotations

import logging
import statistics
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import torch
from tqdm.auto import tqdm

from rlhf.judge.factory import eval_pairs
from rlhf.judge.master_keys import HARDENING_KEYS, PROBE_KEYS
from rlhf.reward import build_reward

log = logging.getLogger(__name__)


def meta_of(row: Dict[str, Any]) -> Dict[str, Any]:
    """A preference row as the task metadata a reward reads (math rows keep question and answer)."""
    meta = {"judge_prompt": row["prompt"]}
    for key in ("question", "answer", "reference", "rubric"):
        if row.get(key):
            meta[key] = row[key]
    return meta


def false_positive_rates(correct: torch.Tensor, flawed: torch.Tensor,
                         keys: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Per key: fraction of items where the key's score >= the correct reply's (false_positive) and >= the flawed
    reply's (beats_flawed), and its mean score. All tensors are (N,) scores of the same N items."""
    out = {}
    for key, s in keys.items():
        out[key] = {"false_positive": float((s >= correct).float().mean()),
                    "beats_flawed": float((s >= flawed).float().mean()),
                    "mean_score": float(s.mean())}
    return out


def score_items(reward: Any, rows: List[Dict[str, Any]], batch_size: int = 8) -> Tuple[torch.Tensor, ...]:
    """(correct, flawed, {key: scores}) for rows, in batches of items (each item: 2 + len(PROBE_KEYS) replies)."""
    n_keys = len(PROBE_KEYS)
    per_item: List[torch.Tensor] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="judge_robustness", disable=None):
        batch = rows[start:start + batch_size]
        metas, replies = [], []
        for r in batch:
            for reply in (r["chosen"], r["rejected"], *PROBE_KEYS):
                metas.append(meta_of(r))
                replies.append(reply)
        per_item.append(reward.score_replies(metas, replies).float().view(len(batch), 2 + n_keys))
    scores = torch.cat(per_item)
    return scores[:, 0], scores[:, 1], {k: scores[:, 2 + i] for i, k in enumerate(PROBE_KEYS)}


def markdown(results: Dict[str, Any]) -> str:
    lines = [f"Reward source: {results['reward']} ({results['n']} items of {results['source']}); a false positive "
             "scores >= the real correct reply.", "",
             "| reply | false positive % | >= flawed reply % | mean score |", "|---|---|---|---|",
             f"| (real correct reply) | - | - | {results['correct_mean_score']:.3f} |",
             f"| (real flawed reply) | - | - | {results['flawed_mean_score']:.3f} |"]
    for key, r in results["keys"].items():
        lines.append(f"| {key!r} | {100 * r['false_positive']:.1f} | {100 * r['beats_flawed']:.1f} | "
                     f"{r['mean_score']:.3f} |")
    lines.append(f"| **mean over keys** | **{100 * results['false_positive_rate']:.1f}** | "
                 f"{100 * results['beats_flawed_rate']:.1f} | |")
    return "\n".join(lines) + "\n"


def run_task(cfg: Any) -> Tuple[Dict[str, Any], str]:
    rows, source = eval_pairs(cfg.dataset, cfg.limit)
    if cfg.reward.name == "exact_match" and not all(r.get("answer") for r in rows):
        raise ValueError(f"reward.name: exact_match needs a reference answer per item; {source} has none")
    if cfg.checkpoint:
        cfg.reward.checkpoint = cfg.checkpoint
    # no run around it: the judge gets its own copy of the base model, on hardware.device
    context = SimpleNamespace(run_dir=None, device=None, tokenizer=None, actor_model=None, reference_model=None,
                              log=None)
    reward = build_reward(cfg, context)
    correct, flawed, keys = score_items(reward, rows, cfg.judge.eval_batch_size)
    per_key = false_positive_rates(correct, flawed, keys)
    results = {
        "reward": cfg.reward.name, "source": source, "n": len(rows),
        "master_key_negatives": cfg.judge.master_key_negatives,
        "hardening_keys_disjoint": not set(PROBE_KEYS) & set(HARDENING_KEYS),
        "correct_mean_score": float(correct.mean()), "flawed_mean_score": float(flawed.mean()),
        "correct_above_flawed": float((correct > flawed).float().mean()),
        "keys": per_key,
        "false_positive_rate": statistics.fmean(r["false_positive"] for r in per_key.values()),
        "beats_flawed_rate": statistics.fmean(r["beats_flawed"] for r in per_key.values()),
    }
    log.info("judge_robustness: %s false-positive rate %.1f %% over %d keys x %d items", cfg.reward.name,
             100 * results["false_positive_rate"], len(PROBE_KEYS), len(rows))
    return results, markdown(results)
