"""Preference loaders: synthetic_prefs (pairs built on synthetic_math problems), and the hub schemas on local fixtures
(tests/fixtures/*_sample.jsonl)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from helpers import FIXTURES as FIX
from helpers import ROOT
from omegaconf import OmegaConf

from rlhf.config import DatasetConfig
from rlhf.dataset import prefs
from rlhf.eval.rewardbench import SYNTHETIC_SECTIONS

CONF = ROOT / "conf" / "dataset"
ANNOTATION = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")


def final(text):
    return text.rstrip().split("#### ")[-1]


def symbol(line):
    """The operator of the worked line's calculation (``3 + 4 = 7``)."""
    return re.search(r"\d+ ([-+*/]) \d+ =", line).group(1)


def test_synthetic_prefs_disjoint_seeded_and_balanced():
    cfg = DatasetConfig(name="synthetic_prefs", num_train=120, num_test=60, seed=3)
    train, test = prefs.load_pref_split(cfg, "train"), prefs.load_pref_split(cfg, "test")
    assert len(train) == 120 and len(test) == 60
    assert train.column_names == ["prompt", "chosen", "rejected", "subset", "rationale"]
    assert not set(train["prompt"]) & set(test["prompt"])
    assert prefs.load_pref_split(cfg, "test")["chosen"] == test["chosen"]  # seeded
    other = prefs.load_pref_split(DatasetConfig(name="synthetic_prefs", num_train=120, num_test=60, seed=4), "test")
    assert other["prompt"] != test["prompt"]
    counts = {s: test["subset"].count(s) for s in prefs.SYNTH_SUBSETS}
    assert set(counts.values()) == {10}
    mapped = {s for subs in SYNTHETIC_SECTIONS.values() for s in subs}
    assert mapped == set(prefs.SYNTH_SUBSETS)
    for row in test:
        assert row["chosen"] != row["rejected"]
        assert row["chosen"].rstrip().split("#### ")[-1].isdigit()


def test_synthetic_prefs_rows_deterministic_and_prefix_stable():
    cfg = DatasetConfig(name="synthetic_prefs", num_train=60, num_test=30, seed=5)
    for split, n in (("train", 60), ("test", 30)):
        rows = prefs.synthetic_rows(cfg, split)
        assert len(rows) == n and rows == prefs.synthetic_rows(cfg, split)
        # the first k rows do not depend on num_train / num_test
        assert prefs.synthetic_rows(replace(cfg, num_train=12, num_test=12), split) == rows[:12]
    with pytest.raises(ValueError, match="unknown split"):
        prefs.synthetic_rows(cfg, "validation")


def test_synthetic_prefs_splits_share_no_calculation():
    """Disjoint at the calculation level (operation and operands), not only in wording, whatever the sizes."""
    cfg = DatasetConfig(name="synthetic_prefs", num_train=600, num_test=200, seed=0)
    train, test = prefs.synthetic_rows(cfg, "train"), prefs.synthetic_rows(cfg, "test")
    def calcs(rows):
        return {tuple(ANNOTATION.findall(r["answer"])) for r in rows}

    assert not calcs(train) & calcs(test)
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def _check_answer(row):
    """The row's GSM8K answer is arithmetically right (recomputed here), its operands are the question's numbers, and
    the chosen reply ends in that answer's ``#### N``; returns N."""
    value = None
    for x, sym, y, z, shown in ANNOTATION.findall(row["answer"]):
        x, y, z = int(x), int(y), int(z)
        assert value is None or x == value  # a chain: each step starts from the previous result
        assert z == int(shown) == {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[sym]
        assert sym != "/" or x % y == 0
        assert re.search(rf"(?<!\d){y}(?!\d)", row["question"])
        value = z
    assert value is not None
    assert final(row["answer"]) == final(row["chosen"]) == str(value)
    return value


def test_synthetic_pairs_are_what_the_subset_says():
    rows = prefs.synthetic_rows(DatasetConfig(name="synthetic_prefs", num_train=60, num_test=60), "test")
    assert {r["subset"] for r in rows} == set(prefs.SYNTH_SUBSETS)  # every pair kind
    for r in rows:
        value = _check_answer(r)
        chosen, rejected, kind = r["chosen"], r["rejected"], r["subset"]
        assert "<<" not in chosen and r["prompt"].startswith(r["question"])
        if kind in ("synth-slip", "synth-wrong-op"):  # the same worked solution with a wrong last step
            assert final(rejected) != str(value) and rejected.count("\n") == chosen.count("\n")
            (line_c, line_r), = [(c, w) for c, w in zip(chosen.split("\n"), rejected.split("\n")) if c != w][:1]
            assert (symbol(line_r) == symbol(line_c)) == (kind == "synth-slip")
        elif kind == "synth-refusal":
            assert "####" not in rejected and not re.search(r"\d", rejected)
        elif kind == "synth-verbose":
            assert len(rejected) > 3 * len(chosen) and r["question"] in rejected and final(rejected) != str(value)
        elif kind == "synth-format":
            assert "####" not in rejected and str(value) in rejected
        else:  # synth-offtopic: another problem's correct solution
            assert kind == "synth-offtopic" and final(rejected) != str(value)
            assert re.search(r"\n#### \d+$", rejected) and "<<" not in rejected


def test_synthetic_pairs_on_multi_step_problems():
    cfg = DatasetConfig(name="synthetic_prefs", num_train=12, num_test=48, operations=["add", "sub", "mul", "div"],
                        min_steps=2, max_steps=3, seed=1)
    rows = prefs.synthetic_rows(cfg, "test")
    assert {r["subset"] for r in rows} == set(prefs.SYNTH_SUBSETS)
    for r in rows:
        assert _check_answer(r) >= 1
        assert len(ANNOTATION.findall(r["answer"])) in (2, 3)
        if r["subset"] in ("synth-slip", "synth-wrong-op"):
            # only the last step is wrong
            assert r["chosen"].split("\n")[:-2] == r["rejected"].split("\n")[:-2]
            assert final(r["rejected"]) != final(r["chosen"])


def test_hh_rlhf_splits_shared_prompt():
    cfg = DatasetConfig(name="hh_rlhf", path=str(FIX / "hh_rlhf_sample.jsonl"), num_test=100)
    ds = prefs.load_pref_split(cfg, "test")
    assert len(ds) == 10
    first = ds[0]
    assert first["prompt"] == "Human: How do I get a stubborn stain out of a white cotton shirt?"
    assert first["chosen"].startswith("Try soaking") and first["rejected"] == "Just throw it away and buy a new one."
    multi = ds[3]  # two-turn conversation: the earlier assistant turn stays in the prompt
    assert multi["prompt"].startswith("Human: I want to bake bread") and multi["prompt"].endswith("nothing fancy.")
    assert "Assistant: Sure!" in multi["prompt"]
    assert set(ds["subset"]) == {"hh_rlhf"}


def test_split_hh_transcript_when_replies_share_a_prefix():
    p, c, r = prefs.split_hh_transcript("\n\nHuman: hi\n\nAssistant: Hello there!", "\n\nHuman: hi\n\nAssistant: Hello.")
    assert (p, c, r) == ("Human: hi", "Hello there!", "Hello.")
    with pytest.raises(ValueError):
        prefs.split_hh_transcript("\n\nHuman: a", "\n\nHuman: b")


def test_rewardbench_fixture_keeps_subsets_and_caps_rows():
    cfg = DatasetConfig(name="rewardbench", path=str(FIX / "rewardbench_sample.jsonl"), num_test=2985)
    ds = prefs.load_pref_split(cfg, "filtered")
    assert len(ds) == 12
    assert ds.column_names == ["prompt", "chosen", "rejected", "subset"]
    assert "math-prm" in ds["subset"] and "hep-go" in ds["subset"]
    cfg.num_test = 5
    assert len(prefs.load_pref_split(cfg, "test")) == 5


def test_hh_rationales_fixture_has_rationale():
    cfg = DatasetConfig(name="hh_rationales", path=str(FIX / "hh_rationales_sample.jsonl"))
    ds = prefs.load_pref_split(cfg, "train")
    assert len(ds) == 8 and "rationale" in ds.column_names
    assert all(r.strip() for r in ds["rationale"])


@pytest.mark.parametrize("name,field,drop", [
    ("rewardbench", "subset", "subset"),
    ("hh_rationales", "rationale", "rationale"),
    ("hh_rlhf", "rejected", "rejected"),
])
def test_bad_rows_name_dataset_row_and_field(tmp_path, name, field, drop):
    src = {"rewardbench": "rewardbench_sample.jsonl", "hh_rationales": "hh_rationales_sample.jsonl",
           "hh_rlhf": "hh_rlhf_sample.jsonl"}[name]
    rows = [json.loads(x) for x in (FIX / src).read_text().splitlines() if x.strip()]
    rows[2][drop] = "" if name == "rewardbench" else None
    if name == "hh_rlhf":
        del rows[2][drop]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=rf"dataset {name} row 2: missing field '{field}'"):
        prefs.load_pref_split(DatasetConfig(name=name, path=str(bad)), "train")


def test_empty_reply_after_split_is_rejected(tmp_path):
    bad = tmp_path / "hh.jsonl"
    bad.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant:"}))
    with pytest.raises(ValueError, match="dataset hh_rlhf row 0: missing field 'rejected'"):
        prefs.load_pref_split(DatasetConfig(name="hh_rlhf", path=str(bad)), "train")


def test_missing_file_and_unknown_dataset():
    with pytest.raises(FileNotFoundError):
        prefs.load_pref_split(DatasetConfig(name="hh_rationales", path="/nonexistent/x.jsonl"), "train")
    with pytest.raises(ValueError, match="not a preference dataset"):
        prefs.load_pref_split(DatasetConfig(name="gsm8k"), "train")


@pytest.mark.parametrize("name", ["synthetic_prefs", "hh_rlhf", "rewardbench", "hh_rationales"])
def test_dataset_yaml_matches_schema(name):
    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF / f"{name}.yaml"))
    assert merged.name == name
