"""Held-out synthetic_prefs accuracy by RewardBench section: zero-shot judge, 6-shot judge, LoRA judge, BT RM.

    python scripts/judge_table.py          # embedded SmolLM2-135M-Instruct on CPU; writes OUT_DIR/judge_table.{json,md}

Settings are the constants below (environment variables of the same name override them). No Hydra, no argparse.
The LoRA judge and the BT RM are trained on the synthetic_prefs train split (problems disjoint from the test split).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig  # noqa: E402

MODEL = os.environ.get("MODEL", "embedded")  # embedded | tiny_random
DTYPE = os.environ.get("DTYPE", "bfloat16")  # CPU: bf16 forward ~2x faster; LoRA/head weights stay float32
N_TEST = int(os.environ.get("N_TEST", "60"))  # held-out pairs (subsets cycle: N_TEST / 6 per subset)
N_TRAIN = int(os.environ.get("N_TRAIN", "600"))
LORA_STEPS = int(os.environ.get("LORA_STEPS", "20"))
BT_STEPS = int(os.environ.get("BT_STEPS", "20"))
BATCH = int(os.environ.get("BATCH", "4"))  # pairs per training step
LORA_LR = float(os.environ.get("LORA_LR", "5e-4"))
BT_LR = float(os.environ.get("BT_LR", "5e-4"))
MAX_LEN = int(os.environ.get("MAX_LEN", "384"))
LORA_LAYERS = int(os.environ.get("LORA_LAYERS", "8"))  # LoRA on the last N decoder layers (0: all) for judge and RM
EVAL_BATCH = int(os.environ.get("EVAL_BATCH", "8"))
METHODS = os.environ.get("METHODS", "zero_shot,six_shot,lora_judge,bt_rm").split(",")
OUT_DIR = Path(os.environ.get("OUT_DIR", "outputs/judge_table"))
SEED = int(os.environ.get("SEED", "0"))
MERGE = os.environ.get("MERGE", "0") == "1"  # keep other methods' rows from an existing OUT_DIR/judge_table.json


def data_cfg() -> DatasetConfig:
    return DatasetConfig(name="synthetic_prefs", num_train=N_TRAIN, num_test=N_TEST, seed=0)


def judge_cfg(**kw: Any) -> JudgeConfig:
    return JudgeConfig(**{"mode": "pairwise", "max_len": MAX_LEN, "eval_batch_size": EVAL_BATCH,
                          "batch_size": BATCH, "demo_seed": SEED, "lora_layers": LORA_LAYERS, **kw})


def progress(tag: str) -> Callable[[Dict[str, float], int], None]:
    def log(m: Dict[str, float], step: int) -> None:
        keys = ("loss", "accuracy", "verdict_accuracy")
        print(f"[{tag}] step {step}: " + " ".join(f"{k}={m[k]:.3f}" for k in keys if k in m), flush=True)

    return log


def run_method(name: str, model_cfg: ModelConfig, train_rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    from rlhf.judge.bt_rm import build_reward_model, train_bt_rm
    from rlhf.judge.lora_judge import build_lora_judge, train_lora_judge
    from rlhf.judge.rubric_judge import build_rubric_judge

    t0 = time.perf_counter()
    history: List[Dict[str, float]] = []
    if name == "zero_shot":
        scorer = build_rubric_judge(model_cfg, judge_cfg(num_demos=0), dtype=DTYPE, seed=SEED)
    elif name == "six_shot":
        scorer = build_rubric_judge(model_cfg, judge_cfg(num_demos=6), dtype=DTYPE, seed=SEED)
    elif name == "lora_judge":
        cfg = judge_cfg(num_demos=0, train_steps=LORA_STEPS, lr=LORA_LR)
        scorer = build_lora_judge(model_cfg, cfg, dtype=DTYPE, seed=SEED)
        history = train_lora_judge(scorer, train_rows, cfg, seed=SEED, log_fn=progress(name))
    elif name == "bt_rm":
        cfg = judge_cfg(train_steps=BT_STEPS, lr=BT_LR)
        scorer = build_reward_model(model_cfg, cfg, dtype=DTYPE, seed=SEED)
        history = train_bt_rm(scorer, train_rows, cfg, seed=SEED, log_fn=progress(name))
    else:
        raise ValueError(f"unknown method {name!r}")
    train_s = time.perf_counter() - t0
    from rlhf.dataset.prefs import load_pref_split
    from rlhf.eval.rewardbench import score_records

    test = load_pref_split(data_cfg(), "test")
    t1 = time.perf_counter()
    sc, sr = scorer.score_pairs(list(test["prompt"]), list(test["chosen"]), list(test["rejected"]))
    eval_s = time.perf_counter() - t1
    rows = [{"subset": s, "score_chosen": c, "score_rejected": r} for s, c, r in zip(test["subset"], sc, sr)]
    res = score_records(rows)
    res.update(method=name, train_s=train_s, eval_s=eval_s, train_history=history, settings=settings(),
               judge_metrics=dict(getattr(scorer, "last_metrics", {})))
    print(f"[{name}] overall={res['overall']:.1f} sections={ {k: round(v, 1) for k, v in res['sections'].items()} } "
          f"train={train_s:.0f}s eval={eval_s:.0f}s", flush=True)
    del scorer
    return res


def markdown(results: List[Dict[str, Any]], wall_s: float) -> str:
    secs = ["Chat", "Chat Hard", "Safety", "Reasoning"]
    lines = [f"Held-out synthetic_prefs, {N_TEST} pairs, model={MODEL} ({DTYPE}); wall time {wall_s:.0f} s", "",
             "| method | " + " | ".join(secs) + " | overall | build+train s | eval s |",
             "|---" * (len(secs) + 4) + "|"]
    for r in results:
        cells = [f"{r['sections'].get(s, float('nan')):.1f}" for s in secs]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['overall']:.1f} | {r['train_s']:.0f} | "
                     f"{r['eval_s']:.0f} |")
    subsets = list(results[0]["subsets"]) if results else []
    lines += ["", "| method | " + " | ".join(subsets) + " |", "|---" * (len(subsets) + 1) + "|"]
    for r in results:
        lines.append(f"| {r['method']} | " + " | ".join(f"{r['subsets'][s]:.0f}" for s in subsets) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from rlhf.dataset.prefs import load_pref_split
    from rlhf.report.io import atomic_write_json, atomic_write_text

    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    model_cfg = ModelConfig(source=MODEL)
    train_rows = list(load_pref_split(data_cfg(), "train"))
    previous: List[Dict[str, Any]] = []
    if MERGE and (OUT_DIR / "judge_table.json").is_file():
        previous = json.loads((OUT_DIR / "judge_table.json").read_text())["results"]
    results: List[Dict[str, Any]] = []
    for name in METHODS:
        results.append(run_method(name.strip(), model_cfg, train_rows))
        merged = [r for r in previous if r["method"] not in {x["method"] for x in results}] + results
        wall = time.perf_counter() - t0
        atomic_write_json(OUT_DIR / "judge_table.json", {"settings": settings(), "wall_s": wall, "results": merged})
        atomic_write_text(OUT_DIR / "judge_table.md", markdown(merged, wall))
    print(markdown(merged, time.perf_counter() - t0))


def settings() -> Dict[str, Any]:
    return {k: globals()[k] for k in ("MODEL", "DTYPE", "N_TEST", "N_TRAIN", "LORA_STEPS", "BT_STEPS", "BATCH",
                                      "LORA_LR", "BT_LR", "MAX_LEN", "LORA_LAYERS", "EVAL_BATCH", "METHODS", "SEED")} | {
        "threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
