"""Multi-criteria rubrics: parsing and its errors, weighted aggregation, single-criterion equivalence, per-criterion
metrics, per-row rubric overrides (loaders -> TaskItem.meta -> JudgeReward) and LoRA judge training examples; all on
the tiny random model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FIXTURES

from rlhf.config import (
    AlgoConfig,
    Config,
    ConfigError,
    DatasetConfig,
    HardwareConfig,
    JudgeConfig,
    ModelConfig,
    RewardConfig,
)
from rlhf.dataset.prefs import load_pref_split, pref_rows
from rlhf.dataset.rubric import normalised_weights, parse_rubric, row_rubric
from rlhf.judge import prompts as jp
from rlhf.judge.lora_judge import (
    batch_examples,
    build_lora_judge,
    judge_step_loss,
    train_lora_judge,
    training_examples,
)
from rlhf.judge.prefix_forward import batched_verdict_logits
from rlhf.judge.rubric_judge import RubricJudge
from rlhf.judge.verdict import (
    criterion_means,
    expected_score,
    symmetric_pairwise,
    verdict_probs,
    weighted_total,
)
from rlhf.reward.judge_reward import JudgeReward
from rlhf.rollout.base import Rollout
from rlhf.task import build_task

TWO = json.dumps({"criteria": [{"name": "correctness", "description": "the final answer is right", "weight": 0.7},
                               {"name": "clarity", "description": "the steps are easy to follow", "weight": 0.3}],
                  "scale": [1, 5], "output": "a single digit"})
OTHER = json.dumps({"criteria": "politeness of the reply", "scale": [1, 3]})  # another scale: other score tokens
DEMOS = [
    {"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.\n#### 4", "rejected": "2 + 2 = 5.\n#### 5"},
    {"prompt": "What is 3 * 3?", "chosen": "3 * 3 = 9.\n#### 9", "rejected": "I cannot help with that."},
]
ITEMS = (["What is 10 + 5?", "Tom has 4 apples and eats one. How many are left?", "Add 3 and 4."],
         ["10 + 5 = 15.\n#### 15", "4 - 1 = 3.\n#### 3", "7"],
         ["10 + 5 = 16.\n#### 16", "I'd rather not say.", "3 + 4 = 8, a long winded answer with many words in it"])
TINY = ModelConfig(source="tiny_random")




def make_judge(tiny, **kw) -> RubricJudge:
    cfg = JudgeConfig(**{"num_demos": 2, "eval_batch_size": 2, "max_len": 128, **kw})
    return RubricJudge(tiny[0], tiny[1], cfg, jp.select_demos(DEMOS, cfg.num_demos, 0))


# ------------------------------------------------------------------------------------------------------ pure parts
def test_parse_string_form_is_one_criterion_and_list_form_weights_normalised():
    old = parse_rubric(JudgeConfig().rubric)
    assert old.names == ["overall"] and old.weights == [1.0] and old.criteria[0].text == old.criteria[0].description
    two = parse_rubric(TWO)
    assert two.names == ["correctness", "clarity"] and (two.low, two.high) == (1, 5)
    assert two.weights == pytest.approx([0.7, 0.3])
    assert two.criteria[1].text == "clarity (the steps are easy to follow)"
    unnormalised = parse_rubric('{"criteria": [{"name": "a", "description": "x", "weight": 2}, '
                                '{"name": "b", "description": "y", "weight": 6}, {"name": "c", "description": "z", '
                                '"weight": 0}]}')
    assert unnormalised.weights == [0.25, 0.75, 0.0]
    assert parse_rubric('{"criteria": [{"name": "a", "description": "x"}, {"name": "b", "description": "y"}]}'
                        ).weights == [0.5, 0.5]  # a missing weight is 1
    assert normalised_weights([1, 3]) == [0.25, 0.75]


@pytest.mark.parametrize("criteria, needle", [
    ([], "empty list"),
    ([{"description": "x", "weight": 1}], "has no 'name'"),
    ([{"name": "a", "weight": 1}], "criteria[0] (a) has no 'description'"),
    ([{"name": "a", "description": "x", "weight": -0.5}], "'weight' must be >= 0"),
    ([{"name": "a", "description": "x", "weight": 0}, {"name": "b", "description": "y", "weight": 0.0}], "all 0"),
    ([{"name": "a", "description": "x"}, {"name": "a", "description": "y"}], "duplicate name 'a'"),
    ([{"name": "a", "description": "x", "weight": "high"}], "'weight' must be a number"),
    ([{"name": "a", "description": "x", "weight": True}], "'weight' must be a number"),
    ([{"name": "a", "description": "x", "wieght": 1}], "unknown key 'wieght'"),
    ([{"name": "a b", "description": "x"}], "may only use letters"),
    (["just text"], "must be an object"),
    (7, "'criteria' must be a non-empty string or a list"),
])
def test_parse_errors_are_one_line_and_name_the_problem(criteria, needle):
    with pytest.raises(ConfigError) as e:
        parse_rubric(json.dumps({"criteria": criteria, "scale": [1, 5]}))
    msg = str(e.value)
    assert msg.startswith("judge.rubric: ") and needle in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"^dataset gsm8k row 3: rubric: "):
        row_rubric(json.dumps({"criteria": criteria}), "dataset gsm8k row 3: rubric")
    with pytest.raises(ConfigError, match="'weight' must be finite"):
        parse_rubric('{"criteria": [{"name": "a", "description": "x", "weight": NaN}]}')


def test_weighted_total_and_criterion_means_hand_computed():
    scores = torch.tensor([[4.0, 2.0], [1.0, 5.0]])
    assert torch.allclose(weighted_total(scores, parse_rubric(TWO).weights), torch.tensor([3.4, 2.2]))
    col = torch.tensor([0.1, 0.7, 0.3])
    assert torch.equal(weighted_total(col[:, None], [1.0]), col)  # one criterion: the column itself
    m = criterion_means({"a": [torch.tensor([1.0, 2.0]), torch.tensor([6.0])], "b": [torch.tensor([0.5])]})
    assert m == {"criterion/a_mean": 3.0, "criterion/b_mean": 0.5}


# -------------------------------------------------------------------------------------------------- model paths
@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_single_criterion_scores_bit_identical_to_the_one_prompt_path(tiny, mode):
    """A string rubric goes through the multi-criteria code as one group of one criterion of weight 1: its scores are
    exactly the verdict-token formula on the one prefix (what the judge computed before criteria existed)."""
    judge = make_judge(tiny, mode=mode)
    pr = judge.prompter
    criteria = json.loads(judge.cfg.rubric)["criteria"]
    assert f"You are an impartial judge. Criteria: {criteria}. " in pr.prefix_text  # shown as written, as before
    assert judge.criterion_prompters() == [pr]
    if mode == "pairwise":
        suffixes = [pr.pair_suffix(p, a, b) for p, a, b in zip(*ITEMS)] + \
                   [pr.pair_suffix(p, b, a) for p, a, b in zip(*ITEMS)]
    else:
        suffixes = [pr.single_suffix(p, r) for p, r in zip(ITEMS[0], ITEMS[1])]
    for use_cache in (True, False):
        cache = judge.prefix_cache() if use_cache else None
        probs = verdict_probs(batched_verdict_logits(judge.model, pr.prefix_ids, suffixes, pr.verdict_ids,
                                                     judge.pad_id, judge.device, 2, cache))
        if mode == "pairwise":
            expected = symmetric_pairwise(probs[:3], probs[3:])
            got = judge.prob_first_better(*ITEMS, use_cache=use_cache)
            again = judge.prob_first_better(*ITEMS, use_cache=use_cache, rubrics=[None, "", judge.cfg.rubric])
            assert set(judge.last_metrics) == {"position_bias", "order_agreement"}
        else:
            expected = expected_score(probs, pr.rubric.score_values)
            got = judge.pointwise_scores(ITEMS[0], ITEMS[1], use_cache=use_cache)
            again = judge.pointwise_scores(ITEMS[0], ITEMS[1], use_cache=use_cache, rubrics=[None] * 3)
            assert judge.last_metrics == {}
        assert torch.equal(got, expected) and torch.equal(again, expected)


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_multi_criteria_weighted_aggregate_metrics_and_one_cache_per_criterion(tiny, mode):
    judge = make_judge(tiny, mode=mode, rubric=TWO)
    prompters = judge.criterion_prompters()
    assert [p.criterion for p in prompters] == [0, 1] and prompters[0] is judge.prompter
    assert "Criteria: correctness (the final answer is right)." in prompters[0].prefix_text
    assert "Criteria: clarity (the steps are easy to follow)." in prompters[1].prefix_text
    if mode == "pairwise":
        per = [symmetric_pairwise(*judge.pair_order_probs(*ITEMS, prompter=p)) for p in prompters]
        total = judge.prob_first_better(*ITEMS)
    else:
        per = [expected_score(judge.score_probs(ITEMS[0], ITEMS[1], prompter=p), [1, 2, 3, 4, 5]) for p in prompters]
        total = judge.pointwise_scores(ITEMS[0], ITEMS[1])
    assert not torch.allclose(per[0], per[1])  # the criterion text reaches the model
    assert torch.allclose(total, 0.7 * per[0] + 0.3 * per[1], atol=1e-6)
    assert judge.last_metrics["criterion/correctness_mean"] == pytest.approx(float(per[0].mean()), abs=1e-6)
    assert judge.last_metrics["criterion/clarity_mean"] == pytest.approx(float(per[1].mean()), abs=1e-6)
    if mode == "pairwise":  # still symmetric: swapping the replies gives the complement
        swapped = judge.prob_first_better(ITEMS[0], ITEMS[2], ITEMS[1])
        assert torch.allclose(total + swapped, torch.ones(3), atol=1e-6)
    assert len(judge._caches) == 2  # one cached prefix per criterion
    uncached = judge.prob_first_better(*ITEMS, use_cache=False) if mode == "pairwise" else \
        judge.pointwise_scores(ITEMS[0], ITEMS[1], use_cache=False)
    assert torch.allclose(uncached, total, atol=1e-4)
    judge.invalidate_cache()
    assert not judge._caches


def test_per_row_rubric_is_used_for_that_row_only(tiny):
    judge = make_judge(tiny, mode="pointwise")
    base = judge.pointwise_scores(ITEMS[0], ITEMS[1])
    mixed = judge.pointwise_scores(ITEMS[0], ITEMS[1], rubrics=[None, OTHER, None])
    other = make_judge(tiny, mode="pointwise", rubric=OTHER).pointwise_scores(ITEMS[0][1:2], ITEMS[1][1:2])
    assert torch.allclose(mixed[[0, 2]], base[[0, 2]], atol=1e-5)
    assert mixed[1].item() == pytest.approx(other.item(), abs=1e-5) and 1.0 <= mixed[1].item() <= 3.0
    assert not torch.allclose(mixed[1], base[1])
    pair = make_judge(tiny)
    sc, sr = pair.score_pairs(*ITEMS, rubrics=[TWO, None, None])
    assert set(pair.last_metrics) >= {"criterion/correctness_mean", "criterion/clarity_mean"}
    assert all(c + r == pytest.approx(1.0) for c, r in zip(sc, sr))
    with pytest.raises(ConfigError, match="^rubric: "):
        pair.score_pairs(*ITEMS, rubrics=['{"criteria": []}', None, None])


def test_judge_reward_reads_the_item_rubric_and_logs_criteria(tiny):
    judge = make_judge(tiny, mode="pointwise")
    cfg = Config(model=TINY, dataset=DatasetConfig(), judge=judge.cfg,
                 reward=RewardConfig(name="rubric_judge", judge_signal="pointwise"), algo=AlgoConfig(),
                 hardware=HardwareConfig())
    prompts = ["Add 2 and 3.", "What is 10 + 5?"]
    meta = [{"judge_prompt": prompts[0], "answer": "#### 5", "rubric": TWO},
            {"judge_prompt": prompts[1], "answer": "#### 15"}]
    ids = torch.randint(10, 100, (4, 8))
    replies = ["2 + 3 = 5.\n#### 5", "2 + 3 = 6.\n#### 6", "10 + 5 = 15.\n#### 15", "I can't help with that."]
    rollout = Rollout(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=torch.ones(4, 3),
                      prompt_len=5, prompts=prompts, responses=replies, group_size=2, meta=meta)
    out = JudgeReward(cfg, judge).score(rollout)
    assert {"judge_criterion/correctness_mean", "judge_criterion/clarity_mean"} <= set(out.metrics)
    two = make_judge(tiny, mode="pointwise", rubric=TWO).pointwise_scores([prompts[0]] * 2, replies[:2])
    plain = judge.pointwise_scores([prompts[1]] * 2, replies[2:])
    expected = torch.cat([two, plain]) * cfg.reward.scale + cfg.reward.shift
    assert torch.allclose(out.rewards, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------ row loaders
def test_loaders_carry_valid_row_rubrics_and_refuse_bad_ones_by_row(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k_sample.jsonl").read_text().splitlines()][:3]
    rows[1]["rubric"] = TWO
    rows[2]["rubric"] = None
    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = build_task(DatasetConfig(name="gsm8k", path=str(tmp_path / "gsm.jsonl"), num_test=3)).items("test")
    assert [it.meta.get("rubric") for it in items] == [None, TWO, None]
    rows[2]["rubric"] = '{"criteria": [{"name": "a", "description": "x", "weight": -1}]}'
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"^dataset gsm8k row 2: rubric: criteria\[0\] \(a\): 'weight' must be >= 0"):
        build_task(DatasetConfig(name="gsm8k", path=str(tmp_path / "bad.jsonl"), num_test=3)).items("test")

    hh = [json.loads(line) for line in (FIXTURES / "hh_rlhf_sample.jsonl").read_text().splitlines()][:3]
    hh[0]["rubric"] = json.loads(TWO)  # an object is accepted and kept as JSON text
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    cfg = DatasetConfig(name="hh_rlhf", path=str(tmp_path / "hh.jsonl"), system_prompt=None, num_test=3)
    items = build_task(cfg).items("test")
    assert parse_rubric(items[0].meta["rubric"]) == parse_rubric(TWO) and "rubric" not in items[1].meta
    assert pref_rows(cfg, "test")[0]["rubric"] == items[0].rubric
    assert list(load_pref_split(cfg, "test")["rubric"]) == [items[0].rubric, "", ""]
    hh[1]["rubric"] = '{"criteria": "x", "scale": [3, 3]}'
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    with pytest.raises(ValueError, match=r"^dataset hh_rlhf row 1: rubric: 'scale'"):
        pref_rows(cfg, "test")


# ----------------------------------------------------------------------------------------------- LoRA judge
def test_lora_judge_trains_every_criterion_with_the_pair_label():
    cfg = JudgeConfig(num_demos=0, max_len=96, mode="pointwise", rubric=TWO, train_steps=2, batch_size=2, lr=1e-3)
    judge = build_lora_judge(TINY, cfg)
    row = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}
    examples = training_examples(judge, row, use_rationale=False)
    prompters = judge.criterion_prompters()
    top, bottom = judge.prompter.verdict_ids[-1], judge.prompter.verdict_ids[0]
    assert [t for _, t in examples] == [[top], [bottom], [top], [bottom]]  # chosen -> 5, rejected -> 1, per criterion
    assert examples[0][0][:len(prompters[0].prefix_ids)] == prompters[0].prefix_ids
    assert examples[2][0][:len(prompters[1].prefix_ids)] == prompters[1].prefix_ids
    # a row rubric of another scale: its own verdict tokens; the KV-cached step equals the uncached one
    rows = [row, dict(row, rubric=OTHER)]
    exs, prs = batch_examples(judge, rows, use_rationale=False)
    assert len(exs) == 6 and [t for _, t in exs[4:]] == [[prs[4].verdict_ids[-1]], [prs[4].verdict_ids[0]]]
    assert len(prs[4].verdict_ids) == 3
    with_cache = judge_step_loss(judge, exs, reuse_prefix=True, prompters=prs)
    without = judge_step_loss(judge, exs, reuse_prefix=False, prompters=prs)
    for k in ("loss", "verdict_loss", "verdict_accuracy"):
        assert float(with_cache[k].detach()) == pytest.approx(float(without[k].detach()), abs=1e-5)
    hist = train_lora_judge(judge, rows * 2, cfg)
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)


def test_pair_accuracy_passes_each_rows_rubric_to_a_judge():
    from rlhf.judge.factory import pair_accuracy

    class Prompter:
        def request(self, row):
            return row["prompt"]

    class Judge:
        prompter = Prompter()

        def __init__(self):
            self.seen = []

        def score_pairs(self, prompts, chosen, rejected, rubrics=None):
            self.seen.append(rubrics)
            return [1.0] * len(prompts), [0.0] * len(prompts)

    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "rubric": '{"criteria": "x", "scale": [1, 5]}'},
            {"prompt": "q", "chosen": "c", "rejected": "r"}]
    judge = Judge()
    assert pair_accuracy(judge, rows, batch_size=2) == 1.0
    assert judge.seen == [[rows[0]["rubric"], None]]
    plain = Judge()
    pair_accuracy(plain, [rows[1]], batch_size=2)
    assert plain.seen == [None]  # no row rubric: the judge's own
