"""A judge on the actor's own base model (judge.share_base): same scores as a separate copy, actor untouched."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from test_judge_reward import make_cfg, make_rollout

from rlhf.backend.checkpoint import write_model_files
from rlhf.config import (
    ConfigError,
    HardwareConfig,
    LoggingConfig,
    LoraConfig,
    validate,
)
from rlhf.judge.lora_judge import load_lora_judge, peft_lora_config
from rlhf.model.shared import (
    JUDGE_ADAPTER,
    AdapterView,
    adapter_parameters,
    add_judge_adapter,
)
from rlhf.report.logger import MetricsLogger
from rlhf.reward.base import RewardContext
from rlhf.reward.judge_reward import build_judge_reward


@pytest.fixture
def actor(tiny_policy):
    """`actor(lora=True)` -> (policy, tokenizer): the tiny random model (seed 0), LoRA r=4 on q_proj/v_proj or full."""

    def build(lora: bool = True):
        policy, tok = tiny_policy(lora=LoraConfig(enabled=lora, r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        policy.eval()  # (from_config builds in train mode; LoRA dropout would make forwards random)
        return policy, tok

    return build


def lora_cfg(cfg, enabled: bool = True):
    return replace(cfg, model=replace(cfg.model, lora=replace(cfg.model.lora, enabled=enabled)))


def context(cfg, tmp_path, policy, tok, log=None) -> RewardContext:
    return RewardContext(cfg=cfg, tokenizer=tok, run_dir=tmp_path, device=torch.device("cpu"),
                        actor_model=policy.model, reference_model=policy.ref_model, log=log)


def flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


def randomize_actor_adapter(policy):
    with torch.no_grad():
        for p in adapter_parameters(policy.model, "default"):
            p.normal_(0, 0.2)


def test_adapter_view_switches_and_restores(actor):
    policy, _ = actor()
    randomize_actor_adapter(policy)
    view = add_judge_adapter(policy.model, peft_lora_config(LoraConfig(enabled=True, r=2, alpha=4,
                                                                        target_modules=["q_proj"])), seed=0)
    with torch.no_grad():
        for p in view.parameters():
            p.normal_(0, 0.3)
    before = flags(policy.model)
    assert all(not before[n] for n in before if f".{JUDGE_ADAPTER}." in n)  # the new adapter starts frozen
    x = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        actor_logits = policy.model(input_ids=x).logits
        judge_logits = view(input_ids=x).logits
        base_logits = AdapterView(policy.model, None)(input_ids=x).logits
        with policy.model.disable_adapter():
            reference = policy.model(input_ids=x).logits
        again = policy.model(input_ids=x).logits
    assert not torch.allclose(judge_logits, actor_logits) and not torch.allclose(judge_logits, base_logits)
    assert torch.equal(base_logits, reference)
    assert torch.equal(again, actor_logits)  # the actor's adapter is active again
    assert policy.model.active_adapter == "default" and flags(policy.model) == before
    with view.active(trainable=True):
        assert all(p.requires_grad for p in view.parameters())
    assert flags(policy.model) == before


def test_rubric_judge_on_shared_base_scores_like_a_copy(actor, tmp_path):
    cfg = lora_cfg(make_cfg("rubric_judge", judge_signal="pairwise"))
    policy, tok = actor()
    randomize_actor_adapter(policy)  # the judge must not see the actor's adapter
    shared = build_judge_reward(cfg, context(cfg, tmp_path / "a", policy, tok))
    assert isinstance(shared.scorer.model, AdapterView)
    copy = build_judge_reward(cfg, RewardContext(cfg=cfg, tokenizer=None, run_dir=tmp_path / "b",
                                                device=torch.device("cpu")))
    assert not isinstance(copy.scorer.model, AdapterView)
    rollout = make_rollout()
    assert torch.allclose(shared.score(rollout).rewards, copy.score(rollout).rewards, atol=1e-5)


def test_rubric_judge_full_finetune_uses_the_reference_copy(actor, tmp_path):
    cfg = lora_cfg(make_cfg("rubric_judge"), enabled=False)
    policy, tok = actor(lora=False)
    reward = build_judge_reward(cfg, context(cfg, tmp_path, policy, tok))
    assert reward.scorer.model is policy.ref_model
    assert torch.isfinite(reward.score(make_rollout()).rewards).all()


def test_lora_judge_trains_its_adapter_only_and_is_reused_on_resume(actor, tiny_lm, tmp_path):
    cfg = lora_cfg(make_cfg("lora_judge"))
    policy, tok = actor()
    randomize_actor_adapter(policy)
    plain = lambda n: n.replace(".base_layer", "")  # noqa: E731 (the judge's targets wrap more modules)
    actor_state = {plain(n): p.detach().clone() for n, p in policy.model.named_parameters()}
    before = flags(policy.model)
    calls = []
    reward = build_judge_reward(cfg, context(cfg, tmp_path, policy, tok, log=lambda m, s, prefix: calls.append(s)))
    assert calls == [0, 1, 2] and isinstance(reward.scorer.model, AdapterView)  # 2 steps + held-out accuracy
    moved = [n for n, p in policy.model.named_parameters() if not torch.equal(p, actor_state.get(plain(n), p + 1))]
    assert moved and all(f".{JUDGE_ADAPTER}." in n for n in moved)  # only the judge adapter exists anew / moved
    assert {plain(n): f for n, f in flags(policy.model).items() if f".{JUDGE_ADAPTER}." not in n} == \
        {plain(n): f for n, f in before.items()}
    assert not any(p.requires_grad for p in reward.scorer.model.parameters())
    out = reward.score(make_rollout())

    # the in-run save is a normal single-adapter lora_judge: a separate copy loads it and scores the same
    loaded = load_lora_judge(tmp_path / "judge", cfg.model)
    assert not isinstance(loaded.model, AdapterView)
    rollout = make_rollout()
    suffixes = [loaded.prompter.pair_suffix(p, "4", "5") for p in rollout.prompts]
    assert torch.allclose(loaded.verdict_logits(suffixes), reward.scorer.verdict_logits(suffixes), atol=1e-5)

    # the actor's checkpoint holds the actor's adapter only
    write_model_files(tmp_path / "ckpt", policy, tok)
    assert not (tmp_path / "ckpt" / "adapter" / JUDGE_ADAPTER).exists()
    assert isinstance(PeftModel.from_pretrained(tiny_lm(seed=0)[0],
                                                str(tmp_path / "ckpt" / "adapter")), PeftModel)

    # resume: a fresh actor in the same run dir loads <run_dir>/judge instead of training again
    policy2, _ = actor()
    calls.clear()
    again = build_judge_reward(cfg, context(cfg, tmp_path, policy2, tok, log=lambda m, s, prefix: calls.append(s)))
    assert calls == [] and isinstance(again.scorer.model, AdapterView)
    assert torch.allclose(again.score(make_rollout()).rewards, out.rewards, atol=1e-5)


def test_share_base_false_and_impossible_requests(actor, tmp_path):
    cfg = lora_cfg(make_cfg("rubric_judge", judge_kw={"share_base": False}))
    policy, tok = actor()
    assert not isinstance(build_judge_reward(cfg, context(cfg, tmp_path, policy, tok)).scorer.model, AdapterView)
    with pytest.raises(ConfigError, match="judge.share_base"):
        validate(make_cfg("bt_rm", judge_kw={"share_base": True}))
    bad = make_cfg("rubric_judge", judge_kw={"share_base": True})
    with pytest.raises(ConfigError, match="judge.share_base.*deepspeed"):
        validate(replace(bad, hardware=HardwareConfig(deepspeed_stage=2)))
    full = lora_cfg(make_cfg("lora_judge", judge_kw={"share_base": True}), enabled=False)
    with pytest.raises(ConfigError, match="judge.share_base.*lora"):
        validate(full)
    with pytest.raises(ValueError, match="judge.share_base"):  # required, but no actor was handed over
        build_judge_reward(bad, RewardContext(cfg=bad, tokenizer=None, run_dir=tmp_path, device=torch.device("cpu")))


def test_resume_truncation_keeps_other_phases(tmp_path):
    logger = MetricsLogger(tmp_path, LoggingConfig(wandb="disabled", tensorboard=False), {})
    for s in range(5):
        logger.log({"loss": 1.0}, s, prefix="judge")
    for s in range(1, 4):
        logger.log({"reward_mean": 0.5}, s)
        logger.log({"em_flexible": 0.1}, s, prefix="eval")  # eval rows count RL steps: no phase of their own
    logger.truncate_after(2)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "judge"] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in rows if "reward_mean" in r] == [1, 2]
    assert [r["step"] for r in rows if "eval/em_flexible" in r] == [1, 2]
