"""task=routing: held-out preference accuracy of RM + judge routing against the judge-call fraction.

    python -m rlhf.evaluate task=routing reward=routed [reward.ensemble=3] [reward.checkpoint=RM] limit=120 \
        output=routing.json

For every test pair of the preference source (synthetic_prefs for math) the BT RM (reward.checkpoint, or trained
first on the train split; an ensemble with reward.ensemble >= 2) gives P(chosen better) = sigmoid(r_c - r_r), the
pairwise judge (reward.route_judge, reward.judge_checkpoint) gives its own, both orders averaged. At each judge-call
fraction (0, 10, 25, 50, 100 %) the judge decides the pairs picked by each rule and the RM the rest: uncertainty
routing by margin (RM probability nearest 1/2), by ensemble disagreement (when there is an ensemble), and random
routing at the same budget (mean over 50 draws). Writes OUT.json, OUT.md (the table) and OUT.png (the curves).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from rlhf.judge.factory import build_pair_scorer, judge_cfg_for_signal, eval_pairs
from rlhf.judge.routing import pair_accuracy_of, routed_accuracy, uncertainty
from rlhf.report.plots import plot_curves
from rlhf.reward.routed import member_scores

log = logging.getLogger(__name__)

FRACTIONS = (0.0, 0.1, 0.25, 0.5, 1.0)


def markdown(results: Dict[str, Any]) -> str:
    fr = results["fractions"]
    lines = [f"RM ({results['rm']}) alone {100 * results['rm_accuracy']:.1f} %, judge ({results['judge']}) alone "
             f"{100 * results['judge_accuracy']:.1f} %, on {results['n']} held-out {results['source']} pairs.", "",
             "| routing | " + " | ".join(f"{100 * f:.0f} % judge calls" for f in fr) + " |",
             "|---|" + "---|" * len(fr)]
    for name, accs in results["accuracy"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + " |")
    return "\n".join(lines) + "\n"


def run_task(cfg: Any) -> Tuple[Dict[str, Any], str]:
    rows, source = eval_pairs(cfg.dataset, cfg.limit)
    rm = build_pair_scorer(replace(cfg.reward, name="bt_rm"), cfg.judge, cfg.model, cfg.hardware,
                           checkpoint=cfg.reward.checkpoint or cfg.checkpoint, seed=cfg.seed, dataset_cfg=cfg.dataset)
    judge_reward = replace(cfg.reward, name=cfg.reward.route_judge, checkpoint=cfg.reward.judge_checkpoint,
                           robust="none", ensemble=0)
    judge = build_pair_scorer(judge_reward, judge_cfg_for_signal(cfg.judge, "pairwise"), cfg.model, cfg.hardware,
                              seed=cfg.seed, dataset_cfg=cfg.dataset)
    n = len(rows)
    prompts = [r["prompt"] for r in rows]
    scores = member_scores(rm, prompts * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                           cfg.judge.eval_batch_size)
    per_member = torch.sigmoid(scores[:, :n] - scores[:, n:])
    rm_p, spread = per_member.mean(0), per_member.std(0, unbiased=False)
    requests = [judge.prompter.request(r) for r in rows]
    judge_p = judge.prob_first_better(requests, [r["chosen"] for r in rows], [r["rejected"] for r in rows]).float().cpu()
    rules: Dict[str, Any] = {"uncertainty (margin)": uncertainty(rm_p, spread, "margin")}
    if scores.shape[0] > 1:
        rules["uncertainty (ensemble)"] = uncertainty(rm_p, spread, "ensemble")
    rules["random"] = None
    acc = routed_accuracy(rm_p, judge_p, FRACTIONS, rules, random_draws=50, seed=cfg.seed)
    results = {"rm": f"bt_rm x{scores.shape[0]}" if scores.shape[0] > 1 else "bt_rm",
               "judge": cfg.reward.route_judge, "source": source, "n": n, "fractions": list(FRACTIONS),
               "rm_accuracy": pair_accuracy_of(rm_p), "judge_accuracy": pair_accuracy_of(judge_p), "accuracy": acc}
    plot_curves([100 * f for f in FRACTIONS], {k: [100 * a for a in v] for k, v in acc.items()},
                Path(cfg.output).expanduser().with_suffix(".png"), f"RM + judge routing ({n} held-out pairs)",
                "judge calls (% of pairs)", "pair accuracy (%)")
    log.info("routing: RM %.1f %%, judge %.1f %% alone", 100 * results["rm_accuracy"], 100 * results["judge_accuracy"])
    return results, markdown(results)
