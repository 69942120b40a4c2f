"""`python -m rlhf.evaluate task=gsm8k checkpoint=...` on a checkpoint written by a tiny training run."""

import json
import subprocess
import sys

from test_train_e2e import ROOT, TINY, run_train


def test_evaluate_checkpoint_matches_training_eval(tmp_path):
    run_dir = tmp_path / "run"
    run_train(run_dir, "algo=grpo", "steps=1", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
              "algo.minibatch_size=4", "algo.entropy_coef=0.05", "algo.lr=1e-3")
    ckpt = run_dir / "checkpoints" / "step_000001"
    out = tmp_path / "eval.json"
    overrides = [o for o in TINY if o.startswith(("model=", "dataset.", "generation."))]
    cmd = [sys.executable, "-m", "rlhf.evaluate", "task=gsm8k", f"checkpoint={ckpt}", f"output={out}", "limit=4",
           f"hydra.run.dir={tmp_path / 'h'}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n"] == 4 and 0.0 <= res["em_flexible"] <= 1.0
    # the same greedy replies as the trainer's own "after" evaluation on the same 4 problems
    trained = json.loads((run_dir / "eval.json").read_text())["after"]["examples"]
    assert [e["response"] for e in res["examples"]] == [e["response"] for e in trained[:4]]
    assert out.with_suffix(".md").is_file()
