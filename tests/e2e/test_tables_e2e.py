"""`python -m rlhf.tables` end to end in the quick setting (tiny model): results files, reuse of finished rows."""

import json
import subprocess
import sys

from helpers import ROOT


def run_tables(tmp_path, *args):
    cmd = [sys.executable, "-m", "rlhf.tables", "experiment=table_judges", "quick=true", f"out_dir={tmp_path}",
           f"hydra.run.dir={tmp_path / 'hydra'}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def test_quick_judges_table_writes_results_and_reuses_rows(tmp_path):
    proc = run_tables(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "judges_quick.json").read_text())
    assert [r["label"] for r in res["rows"]] == ["zero-shot rubric judge", "6-shot rubric judge",
                                                 "LoRA judge (rank 16)", "BT reward model"]
    for r in res["rows"]:
        assert not r["failed"] and 0.0 <= r["columns"]["overall"]["mean"] <= 100.0
        assert r["commands"][0].startswith("python -m rlhf.evaluate task=rewardbench")
    md = (tmp_path / "judges_quick.md").read_text()
    assert "| LoRA judge (rank 16) |" in md and "overall 96.2" in md and "quick smoke setting" in md
    again = run_tables(tmp_path)  # same commands: every row is reused, nothing reruns
    assert again.returncode == 0 and (again.stdout + again.stderr).count("reusing") == 4
    bad = subprocess.run([sys.executable, "-m", "rlhf.tables", "experiment=table_judges", "table.entry=deploy",
                          f"hydra.run.dir={tmp_path / 'h2'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "error: table.entry: 'deploy'" in bad.stderr
