"""report.md and `python -m rlhf.report` on hand-written run dirs (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf.report.__main__ import main as report_main
from rlhf.report.run_report import compare_runs, extreme_samples, labels, run_dirs, run_report_markdown


def make_run(d: Path, algo: str, overrides: list, em_after: float, rewards=(0.1, 0.4)) -> Path:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {"model": {"source": "embedded", "lora": {"enabled": True, "r": 16}}, "seed": 0, "steps": 2,
           "dataset": {"name": "synthetic_math"}, "reward": {"name": "exact_match"},
           "algo": {"name": algo, "lr": 2e-4, "prompts_per_step": 4, "samples_per_prompt": 4},
           "generation": {"max_new_tokens": 64}, "hardware": {"device": "cpu", "dtype": "float32", "rollout": "hf",
                                                               "deepspeed_stage": 0}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps({
        "step": 2, "final": {"reward_mean": rewards[-1]}, "wall_seconds": {"total": 60.0},
        "eval_before": {"n": 10, "em_strict": 0.1, "em_flexible": 0.2},
        "eval_after": {"n": 10, "em_strict": em_after, "em_flexible": 0.3}}))
    rows = [{"step": i + 1, "reward_mean": r, "kl": 0.01 * i, "response_length": 40} for i, r in enumerate(rewards)]
    rows.append({"step": 5, "phase": "judge", "judge/loss": 0.5, "judge/accuracy": 0.75})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = extreme_samples(["p1", "p2"], ["good reply", "bad reply"], [1.0, -1.0], 1)
    samples += extreme_samples(["p3"], ["only reply"], [0.5], 2)
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return d


def test_extreme_samples_pick_best_and_worst():
    s = extreme_samples(["a", "b", "c"], ["x", "y", "z"], [0.2, 0.9, -0.1], step=3)
    assert [(r["kind"], r["response"], r["reward"]) for r in s] == [("best", "y", 0.9), ("worst", "z", -0.1)]
    assert extreme_samples([], [], [], 1) == []


def test_run_report_has_config_numbers_phases_and_samples(tmp_path):
    md = run_report_markdown(make_run(tmp_path / "r", "grpo", ["algo=grpo"], 0.4))
    assert "- algo: grpo, lr 0.0002, 4 prompts x 4 samples x 64 tokens" in md
    assert "| em_strict | 10.0 % | 40.0 % |" in md
    assert "judge phase: 1 logged steps" in md and "accuracy 0.750" in md
    best = md.index("## Best-scored sampled replies")
    worst = md.index("## Worst-scored sampled replies")
    assert md.index("good reply") < worst < md.index("bad reply", worst)  # best first, worst last
    assert best < md.index("good reply")


def test_compare_runs_table_labels_and_sweep_dirs(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", "ppo", ["algo=ppo", "seed=0"], 0.2)
    make_run(sweep / "1", "grpo", ["algo=grpo", "seed=0"], 0.5)
    dirs = run_dirs([str(sweep)])
    assert [d.name for d in dirs] == ["0", "1"]
    assert labels(dirs) == ["0: algo=ppo", "1: algo=grpo"]  # the shared seed=0 is left out
    md, png = compare_runs([str(sweep)], sweep)
    text = md.read_text()
    assert "| 0: algo=ppo | ppo | exact_match | 2 | 10.0 % -> 20.0 % |" in text
    assert "| 1: algo=grpo | grpo |" in text and png is not None and png.is_file()
    with pytest.raises(ValueError, match="neither a run dir nor a sweep dir"):
        run_dirs([str(tmp_path / "sweep" / "0" / ".hydra")])


def test_cli_usage_and_errors(tmp_path, capsys):
    assert report_main([]) == 2 and "usage" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 2 and "no such directory" in capsys.readouterr().err
    run = make_run(tmp_path / "one", "ppo", ["algo=ppo"], 0.2)
    sweep_like = tmp_path / "two"
    make_run(sweep_like / "0", "ppo", ["algo=ppo"], 0.2)
    assert report_main([str(sweep_like)]) == 0 and (sweep_like / "compare.md").is_file()
    assert run.is_dir()
