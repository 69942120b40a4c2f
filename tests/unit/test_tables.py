"""rlhf.tables: table specs, result extraction, row commands, and every table experiment composing each of its rows'
configs at embedded and at paper scale (the paper-scale runs cannot happen here; their configs must)."""

from __future__ import annotations

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import rlhf.evaluate  # noqa: F401  (registers evaluate_schema)
import rlhf.sft  # noqa: F401  (registers sft_schema)
from rlhf.algo.registry import register_training_configs
from rlhf.config import to_config
from rlhf.evaluate import load_config
from rlhf.tables import TablesConfig, TableColumn, TableRow, TableSpec, dig, markdown, mean_spread, row_command, \
    row_identity, run_table, spec_errors, twin_of

TABLES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("table_*.yaml"))
PAPER_SCALE = {"train": ["model=qwen2_5_7b_lora", "dataset=gsm8k", "hardware=zero3_gpu"],
               "evaluate": ["model=qwen2_5_7b_lora", "hardware=gpu"]}


def load_table(name: str, *overrides: str) -> TablesConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return OmegaConf.to_object(compose(config_name="tables", overrides=[f"experiment={name}", *overrides]))


def test_dig_paths_alternatives_and_list_indices():
    data = {"eval_after": {"em_strict": 0.25}, "accuracy": {"random": [0.5, 0.6]}, "flag": True}
    assert dig(data, "eval_after.em_strict") == 0.25
    assert dig(data, "em_strict|eval_after.em_strict") == 0.25
    assert dig(data, "accuracy.random.1") == 0.6 and dig(data, "accuracy.random.5") is None
    assert dig(data, "flag") is None and dig(data, "missing.key") is None


def test_mean_spread_and_spec_errors():
    assert mean_spread([1.0, 3.0, None]) == {"mean": 2.0, "std": pytest.approx(1.4142136), "n": 2}
    assert mean_spread([None])["mean"] is None
    bad = TableSpec(name="Bad Name", entry="deploy", rows=[TableRow(label="a"), TableRow(label="a")],
                    columns=[], paper={"b": {"x": 1}})
    errors = "\n".join(spec_errors(bad))
    for part in ("table.entry: 'deploy'", "table.name: 'Bad Name'", "table.columns", "duplicate labels ['a']",
                 "table.paper: rows ['b']"):
        assert part in errors, part


def test_row_command_order_quick_and_extra(tmp_path):
    t = TableSpec(name="t", entry="train", common=["steps=6"], quick=["model=tiny_random"],
                  rows=[TableRow(label="r", overrides=["algo=grpo"]),
                        TableRow(label="base", entry="evaluate", common=False, overrides=["task=gsm8k"],
                                 quick=["limit=4"])],
                  columns=[TableColumn(key="x", label="x")])
    cfg = TablesConfig(table=t, quick=True, extra=["hardware=gpu"], python="py")
    cmd = row_command(cfg, t.rows[0], 1, tmp_path)
    assert cmd == ["py", "-m", "rlhf.train", "steps=6", "algo=grpo", "seed=1", "model=tiny_random", "hardware=gpu",
                   f"hydra.run.dir={tmp_path}"]
    base = row_command(cfg, t.rows[1], 0, tmp_path)
    assert base[:3] == ["py", "-m", "rlhf.evaluate"] and "steps=6" not in base and "model=tiny_random" not in base
    assert base[3:7] == ["task=gsm8k", "seed=0", "limit=4", "hardware=gpu"]
    assert f"output={tmp_path / 'result.json'}" in base


def test_a_row_identical_to_another_tables_finished_row_takes_its_result(tmp_path):
    """Table 2's 0-demonstration row is Table 1's zero-shot row with other paths: it is not run again (python=false
    would fail it), its result and wall time are copied, and a row with another override is not matched."""
    row = TableRow(label="0 demos", overrides=["reward=rubric_judge", "judge.num_demos=0"])
    spec = TableSpec(name="ablations", common=["task=rewardbench"], rows=[row],
                     columns=[TableColumn(key="overall", label="overall")])
    cfg = TablesConfig(table=spec, out_dir=str(tmp_path), python="false")
    twin = tmp_path / "runs" / "judges" / "zero_shot_s0"
    twin.mkdir(parents=True)
    twin_cmd = row_command(cfg, TableRow(label="z", overrides=["judge.num_demos=0", "reward=rubric_judge"]), 0, twin)
    (twin / "table_command.txt").write_text(" ".join(["python", *twin_cmd[1:]]))
    (twin / "result.json").write_text('{"overall": 51.2}')
    (twin / "table_wall.json").write_text('{"seconds": 73.0}')
    mine = tmp_path / "runs" / "ablations" / "0_demos_s0"
    assert row_identity(" ".join(row_command(cfg, row, 0, mine))) == row_identity(" ".join(twin_cmd))
    other = TableRow(label="6", overrides=["reward=rubric_judge", "judge.num_demos=6"])
    assert twin_of(tmp_path / "runs", " ".join(["python", *row_command(cfg, other, 0, mine)[1:]]), "evaluate",
                   mine) is None
    res = run_table(cfg)
    (out,) = res["rows"]
    assert not out["failed"] and out["columns"]["overall"]["mean"] == 51.2 and out["wall_seconds"] == 73.0
    assert res["reused"] == 1 and (mine / "twin_of.txt").read_text() == str(twin)
    assert run_table(cfg)["reused"] == 1  # the second time it is this table's own finished row


def test_a_baseline_row_gives_the_paired_difference_seed_by_seed(tmp_path):
    """Finished runs of two rows x 3 seeds (one seed of the robust row missing): the robust row's paired difference to
    BT is taken over the seeds both have, and the markdown shows its mean and per-seed values."""
    rows = [TableRow(label="BT", overrides=["reward.robust=none"]),
            TableRow(label="R3M", overrides=["reward.robust=r3m"], baseline="BT")]
    spec = TableSpec(name="robust", common=["task=preference"], rows=rows, seeds=[0, 1, 2],
                     columns=[TableColumn(key="accuracy", label="acc"), TableColumn(key="n", label="n")])
    cfg = TablesConfig(table=spec, out_dir=str(tmp_path), python="false")  # a run that is not finished fails
    acc = {("BT", 0): 70.0, ("BT", 1): 75.0, ("BT", 2): 80.0, ("R3M", 0): 72.5, ("R3M", 2): 79.0}
    for (label, seed), value in acc.items():
        run_dir = tmp_path / "runs" / "robust" / f"{label.lower()}_s{seed}"
        run_dir.mkdir(parents=True)
        cmd = row_command(cfg, rows[label == "R3M"], seed, run_dir)
        (run_dir / "table_command.txt").write_text(" ".join(["python", *cmd[1:]]))
        (run_dir / "result.json").write_text(f'{{"accuracy": {value}, "n": 200}}')
    res = run_table(cfg)
    bt, r3m = res["rows"]
    assert "paired" not in bt and r3m["failed"]  # seed 1 of R3M did not run (python=false)
    assert r3m["paired"]["seeds"] == [0, 2] and r3m["paired"]["diffs"] == [2.5, -1.0]
    assert r3m["paired"]["mean"] == pytest.approx(0.75)
    md = markdown(res)
    assert "| acc | acc: minus the baseline row, same seed (per seed) | n |" in md
    assert "| R3M | 75.8 ± 4.6 | +0.8 (+2.5, -1.0) vs BT | 200.0 ± 0.0 |" in md and "| BT | 75.0 ± 5.0 | - |" in md
    cfg.table.rows = [rows[1]]  # a subset without its baseline row is refused with the key named
    with pytest.raises(ValueError, match=r"table.rows\[0\].baseline: 'BT'"):
        run_table(cfg)


def test_markdown_has_rows_paper_column_and_commands():
    res = {"name": "t", "title": "T", "note": "what it shows", "columns": [{"label": "acc"}], "paper": {"a": {"acc": 9}},
           "paper_source": "the paper", "scale": "embedded", "seeds": [0, 1], "date": "2026-11-29",
           "machine_start": {"cpus": 2, "loadavg_1_5_15": [1, 1, 1]}, "machine_end": {"loadavg_1_5_15": [2, 2, 2]},
           "wall_seconds": 120.0, "command": "python -m rlhf.tables experiment=table_t",
           "rows": [{"label": "a", "columns": {"acc": {"mean": 80.0, "std": 2.0, "n": 2}}, "wall_seconds": 60.0,
                     "commands": ["python -m rlhf.evaluate x"], "failed": False}]}
    md = markdown(res)
    assert "| a | 80.0 ± 2.0 | 60 | acc 9 |" in md and "`python -m rlhf.evaluate x`" in md and "what it shows" in md


@pytest.mark.parametrize("name", TABLES)
@pytest.mark.parametrize("scale", ["embedded", "quick", "paper"])
def test_every_table_row_composes(name, scale, tmp_path):
    """Each row's command line, as rlhf.tables would run it, composes and passes the entry point's start-up checks
    (without loading a model); paper scale appends the 7B / multi-GPU presets to every row."""
    register_training_configs()
    spec = load_table(name).table
    assert not spec_errors(spec)
    for row in spec.rows:
        entry = row.entry or spec.entry
        extra = (list(spec.paper_extra) or PAPER_SCALE.get(entry, [])) if scale == "paper" else []
        cfg = TablesConfig(table=spec, quick=scale == "quick", extra=extra, python="py")
        args = row_command(cfg, row, 0, tmp_path)[3:-1]  # drop python -m <entry> and hydra.run.dir
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            if entry == "train":
                to_config(compose(config_name="config", overrides=args))
            elif entry == "evaluate":
                load_config(compose(config_name="evaluate", overrides=args))
            else:
                compose(config_name="sft", overrides=args)
