"""`python -m rlhf.evaluate task=judge_on_policy reward=<judge/RM> ...`: does a reward rank a policy's own replies?

A judge that scores synthetic pairs well can still fail on what RL shows it: the policy's sampled replies. This task
takes `samples` sampled replies per math test problem (generated here by cfg.model + checkpoint with the
generation.* settings, or read from predictions=FILE: JSONL lines {"question", "answer", "response"}, or the JSON this
task wrote before, whose "replies" it reuses), grades each by its final number (flexible exact match against the
test answer: the label, never shown to the reward unless its judge.reference says so), scores each with the reward,
and reports:
  group_accuracy  over every (right, wrong) pair of replies to the same problem, the fraction ranked right above
                  wrong (ties 1/2): what a group-relative advantage sees;
  auc             the same over all (right, wrong) pairs of the whole set;
  mean scores of right and wrong replies, and how many of each.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import torch
from tqdm.auto import tqdm

from rlhf.dataset.math_data import judge_prompt
from rlhf.eval.policy_eval import load_policy_engine
from rlhf.judge.policy_pairs import ranking
from rlhf.report.io import read_jsonl
from rlhf.reward import build_reward
from rlhf.rollout.base import sampled_replies, sampling_params
from rlhf.task.math import MathTask
from rlhf.task.math_grading import is_correct

log = logging.getLogger(__name__)

FIELDS = ("question", "answer", "response")


def read_replies(path: str) -> List[Dict[str, str]]:
    """Reply rows from a JSONL predictions file or an earlier judge_on_policy OUT.json (its "replies")."""
    p = Path(path).expanduser()
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        rows = data.get("replies") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"predictions: {path} has no \"replies\" list (an OUT.json of task=judge_on_policy)")
    else:
        rows = read_jsonl(p, what="predictions")
    for i, r in enumerate(rows):
        for f in FIELDS:
            if not isinstance(r.get(f), str) or (f != "response" and not r[f].strip()):
                raise ValueError(f"predictions: {path} row {i}: missing field '{f}'")
    return [{f: r[f] for f in FIELDS} for r in rows]


def sample_replies(cfg: Any) -> List[Dict[str, str]]:
    """cfg.samples sampled replies of the policy to each of the first cfg.limit math test problems (0: all)."""
    task = MathTask(cfg.dataset)
    items = task.items("test")
    items = items[: cfg.limit] if cfg.limit else items
    engine, tok = load_policy_engine(cfg)
    g = cfg.generation
    with torch.no_grad():
        replies = sampled_replies(engine, [task.prompt_text(tok, it) for it in items], sampling_params(g, cfg.samples),
                                  g.eval_batch_size // cfg.samples, seed_of=lambda start: cfg.seed * 100_003 + start,
                                  progress=True, desc="judge_on_policy: sampling")
    return [{"question": it.messages[-1]["content"], "answer": str(it.answer), "response": r}
            for it, group in zip(items, replies) for r in group]


def markdown(res: Dict[str, Any]) -> str:
    pct = lambda v: "-" if v != v else f"{100 * v:.1f} %"  # noqa: E731  (nan: no pair)
    return ("| reward | replies (right / wrong) | same-problem ranking accuracy | AUC | mean score right / wrong |\n"
            "|---|---|---|---|---|\n"
            f"| {res['reward']} | {res['n']} ({res['n_right']} / {res['n_wrong']}) | {pct(res['group_accuracy'])} "
            f"({int(res['group_pairs'])} pairs) | {pct(res['auc'])} | {res['score_right']:.3f} / "
            f"{res['score_wrong']:.3f} |\n")


def run_task(cfg: Any) -> Tuple[Dict[str, Any], str]:
    replies = read_replies(cfg.predictions) if cfg.predictions else sample_replies(cfg)
    context = SimpleNamespace(run_dir=None, device=None, tokenizer=None, actor_model=None, reference_model=None,
                              log=None)
    reward = build_reward(cfg, context)  # its own copy of the base model; a trained judge/RM via reward.checkpoint
    metas = [{"judge_prompt": judge_prompt(r["question"], cfg.dataset.system_prompt), "answer": r["answer"]}
             for r in replies]
    texts = [r["response"] for r in replies]
    bs = max(1, cfg.judge.eval_batch_size)
    scores = torch.cat([reward.score_replies(metas[i:i + bs], texts[i:i + bs]).float().cpu()
                        for i in tqdm(range(0, len(texts), bs), desc="judge_on_policy: scoring", disable=None)])
    right = torch.tensor([is_correct(r["response"], r["answer"], "flexible") for r in replies], dtype=torch.bool)
    ids: Dict[str, int] = {}
    groups = [ids.setdefault(r["question"], len(ids)) for r in replies]
    res: Dict[str, Any] = {
        "reward": cfg.reward.name, "checkpoint": cfg.reward.checkpoint, "n": len(replies), "problems": len(ids),
        "n_right": int(right.sum()), "n_wrong": int((~right).sum()),
        "score_right": float(scores[right].mean()) if right.any() else float("nan"),
        "score_wrong": float(scores[~right].mean()) if (~right).any() else float("nan"),
        **ranking(scores, right, groups),
        "replies": [{**r, "right": bool(c), "score": float(s)} for r, c, s in zip(replies, right, scores)],
    }
    log.info("judge_on_policy: %s ranks right above wrong in %.1f %% of %d same-problem pairs (AUC %.3f)",
             cfg.reward.name, 100 * res["group_accuracy"], int(res["group_pairs"]), res["auc"])
    return res, markdown(res)
