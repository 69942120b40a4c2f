"""Gradient accumulation through DeepSpeed in one process (gloo, world size 1), for tests/e2e/test_distributed.py.

`python tests/ds_accumulation.py STAGE` prints one JSON line: for loss_agg token_mean and seq_mean, the largest
difference between the full-minibatch gradients (DeepSpeed's own, read at the step) and those accumulated over
micro-batches, and between the returned stats; then the NaN case: a non-finite loss in the second micro-batch of the
first minibatch must skip that minibatch and leave nothing behind in ZeRO's buffers, so the second minibatch's
gradient equals that of a clean run (lr 0, so that both runs step from the same weights).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

# run as a script (not under pytest, so tests/conftest.py does not set the path): tests/ for `helpers`, and the
# folder of test_update.py, whose accumulation_setup builds the model, rollout and config
TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS / "unit" / "algo")]

import test_update as T  # noqa: E402

from rlhf.algo import step as algo_step  # noqa: E402
from rlhf.algo.registry import build_algorithm  # noqa: E402
from rlhf.backend.distributed import init_distributed  # noqa: E402
from rlhf.config import Config, HardwareConfig  # noqa: E402

SEED = 7


def run(hw, dist, loss_agg: str, bad_row=None, **algo):
    from deepspeed.utils import safe_get_full_grad

    from rlhf.backend.zero import DeepSpeedBackend

    policy, exp, cfg = T.accumulation_setup("ppo", loss_agg)
    if bad_row is not None:
        adv = exp.advantages.clone()
        adv[bad_row] = float("nan")
        exp = dataclasses.replace(exp, advantages=adv)
    cfg = dataclasses.replace(cfg, **algo)
    backend = DeepSpeedBackend(Config(algo=cfg, hardware=hw), policy, dist)
    grads, step = [], backend.step

    def recording_step():
        grads.append([safe_get_full_grad(p).detach().clone() for p in backend.ds_engine.module.parameters()
                      if p.requires_grad])
        return step()

    backend.step = recording_step
    stats = algo_step.update(backend.model, exp, build_algorithm(cfg), 0.1, 1.0, backend, generator=torch.Generator().manual_seed(SEED))
    return grads, stats


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def main(stage: int) -> None:
    extra = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if stage == 3 else {}
    hw = HardwareConfig(device="cpu", deepspeed_stage=stage, num_threads=1, deepspeed_config=extra)
    dist = init_distributed(hw)
    out = {}
    for agg in ("token_mean", "seq_mean"):
        ref, ref_stats = run(hw, dist, agg)
        got, stats = run(hw, dist, agg, micro_batch_size=2)
        out[agg] = {"steps": [len(ref), len(got)], "grad_diff": max_diff(ref[0], got[0]),
                    "grad_max": max(g.abs().max().item() for g in ref[0]),
                    "stat_diff": max(abs(ref_stats[k] - stats[k]) for k in ref_stats),
                    "skipped": stats["skipped_updates"]}
    bad = int(torch.randperm(8, generator=torch.Generator().manual_seed(SEED))[3])  # minibatch 1, micro-batch 2
    frozen = {"minibatch_size": 4, "micro_batch_size": 2, "lr": 0.0, "critic_lr": 0.0}
    clean, _ = run(hw, dist, "token_mean", **frozen)
    got, stats = run(hw, dist, "token_mean", bad_row=bad, **frozen)
    out["nan"] = {"steps": [len(clean), len(got)], "skipped": stats["skipped_updates"],
                  "optimizer_steps": stats["optimizer_steps"], "grad_diff": max_diff(clean[1], got[0])}
    print(json.dumps(out))
    dist.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
