"""scripts/seed_table.py on a hand-made sweep dir: per-seed rows and the mean ± std of the changes, hand-computed."""

import importlib.util
import json

import pytest
from helpers import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("seed_table", ROOT / "scripts" / "seed_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def job(d, strict_after, flex_after, total=None):
    d.mkdir()
    s = {"step": 6, "eval_before": {"n": 100, "em_strict": 0.09, "em_flexible": 0.17, "mean_response_tokens": 85.0},
         "eval_after": {"n": 100, "em_strict": strict_after, "em_flexible": flex_after, "mean_response_tokens": 60.0}}
    if total is not None:
        s["wall_seconds"] = {"total": total}
    else:
        (d / "summary.md").write_text("| phase | wall time |\n| total | 480.0 s (8.0 min) |\n")
    (d / "summary.json").write_text(json.dumps(s))


def test_seed_table_rows_and_spread(tmp_path):
    job(tmp_path / "0", 0.21, 0.19, total=420.0)
    job(tmp_path / "1", 0.19, 0.15)  # an older run: the wall time comes from summary.md
    (tmp_path / "summary.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"job": 0, "overrides": "seed=0", "status": "ok", "dir": "0"},
        {"job": 1, "overrides": "experiment=quickstart seed=1", "status": "ok", "dir": "1"},
        {"job": 2, "overrides": "seed=2", "status": "failed", "dir": "2"}]) + "\n")
    md = load_script().main(tmp_path)
    assert "| 0 | 6 | 9 -> 21 % | 17 -> 19 % | 60 | 7.0 min |" in md
    assert "| 1 | 6 | 9 -> 19 % | 17 -> 15 % | 60 | 8.0 min |" in md
    # strict changes +12, +10 -> mean +11.0, sample std 1.4; flexible +2, -2 -> mean +0.0, std 2.8
    assert "| mean ± std over 2 seeds | | +11.0 ± 1.4 pts | +0.0 ± 2.8 pts | | 7.5 min |" in md
    assert "Not finished: job 2 (failed)." in md
    out = json.loads((tmp_path / "seed_table.json").read_text())
    assert out["strict_change_pts"] == pytest.approx([12.0, 10.0])
