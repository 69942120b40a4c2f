"""Bad input to `rlhf.train` fails at start-up in one line per problem, naming the key (and the file), with nothing
of ours written. In-process over the start-up checks (rlhf.preflight) for every class; a few real CLI runs are in
tests/e2e/test_train_inputs_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT, write_bad_inputs

from rlhf.config import ConfigError, to_config
from rlhf.preflight import input_errors


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from rlhf.algo.registry import register_training_configs

    register_training_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="config", overrides=["model=tiny_random", *overrides])


def errors_for(*overrides: str) -> list[str]:
    dcfg = compose(*overrides)
    try:
        cfg = to_config(dcfg)
    except ConfigError as e:
        return str(e).splitlines()
    return input_errors(cfg)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of broken inputs, one per class (tests/helpers.py, shared with tests/e2e/test_train_inputs_cli.py)."""
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))


# (overrides with {bad} for the folder above, key the first error line must start with, a fragment it must contain)
CASES = [
    # values that passed before and must not
    (["generation.top_p=0"], "generation.top_p", "(0, 1]"),
    (["algo.lr=inf"], "algo.lr", "finite"),
    (["algo.kl_coef=nan"], "algo.kl_coef", "finite"),
    (["seed=-1"], "seed", ">= 0"),
    (["dataset.seed=-3"], "dataset.seed", ">= 0"),
    (["model.tiny.num_attention_heads=3"], "model.tiny.num_attention_heads", "does not divide"),
    (["model.tiny.num_key_value_heads=3"], "model.tiny.num_key_value_heads", "does not divide"),
    (["dataset.path={bad}/empty.jsonl"], "dataset.path", "generated here"),
    (["judge.num_demos=9"], "judge.num_demos", "between 0 and 6"),
    (["algo.dual_clip_c=0.5"], "algo.dual_clip_c", "> 1"),
    # data files
    (["dataset=gsm8k", "dataset.path={bad}/missing.jsonl"], "dataset.path", "missing.jsonl does not exist"),
    (["dataset=gsm8k", "dataset.path={bad}/empty.jsonl"], "dataset.path", "empty.jsonl has no rows"),
    (["dataset=gsm8k", "dataset.path={bad}/binary.jsonl"], "dataset.path", "binary.jsonl is not UTF-8"),
    (["dataset=gsm8k", "dataset.path={bad}/no_answer.jsonl"], "dataset.path", "row 1: missing field 'answer'"),
    (["dataset=gsm8k", "dataset.path={bad}/bad_json.jsonl"], "dataset.path", "row 1: not valid JSON"),
    (["dataset=synthetic_prefs"], "dataset", "preference-pair dataset"),
    (["dataset=synthetic_chat"], "reward", "exact_match grades math answers"),
    (["dataset=hh_rlhf", "reward=bt_rm", "dataset.path={bad}/empty.jsonl"], "dataset.path", "no rows"),
    # model paths: a local path that does not exist must not fall through to hub retries
    (["model=hf", "model.name_or_path={bad}/no_such_model"], "model.name_or_path", "does not exist"),
    (["model=hf", "model.name_or_path={bad}/model_no_config"], "model.name_or_path", "no config.json"),
    # reward / judge inputs
    (["reward=lora_judge", "model.lora.enabled=true", "reward.checkpoint={bad}/nowhere"], "reward.checkpoint",
     "does not exist"),
    (["reward=lora_judge", "model.lora.enabled=true", "reward.checkpoint={bad}/judge_ckpt"], "reward.checkpoint",
     "adapter_model.safetensors is not a readable safetensors file"),
    (["reward=bt_rm", "reward.checkpoint={bad}/rm_no_meta"], "reward.checkpoint", "no rm_meta.json"),
    (["reward=rubric_judge", "judge.rubric='not json'"], "judge.rubric", "not valid JSON"),
    (["reward=rubric_judge", "judge.rubric='{\"criteria\": \"\"}'"], "judge.rubric", "criteria"),
    (["reward=rubric_judge", "judge.demo_path={bad}/missing.jsonl"], "judge.demo_path", "does not exist"),
    (["reward=rubric_judge", "judge.demo_path={bad}/empty.jsonl"], "judge.demo_path", "no rows"),
    (["reward=rubric_judge", "judge.demo_path={bad}/demos_missing_field.jsonl"], "judge.demo_path",
     "missing field 'rejected'"),
    # checkpoints to resume from
    (["resume={bad}/resume_incomplete"], "resume", "no COMPLETE marker"),
    (["resume={bad}/resume_truncated"], "resume", "model.safetensors is not a readable safetensors file"),
]


@pytest.mark.parametrize("overrides,key,fragment", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_named_at_start_up(bad, overrides, key, fragment):
    errors = errors_for(*[o.replace("{bad}", str(bad)) for o in overrides])
    assert errors, "accepted"
    assert errors[0].startswith(f"{key}:"), errors
    assert fragment in errors[0], errors
    assert all("\n" not in e for e in errors)


def test_every_bad_value_is_reported_at_once():
    errors = errors_for("generation.top_p=0", "algo.lr=inf", "seed=-1", "algo.minibatch_size=3")
    keys = [e.split(":")[0] for e in errors]
    assert {"generation.top_p", "algo.lr", "seed", "algo.minibatch_size"} <= set(keys), errors


def test_good_defaults_have_no_errors():
    assert errors_for() == []
    assert errors_for("algo=grpo", "algo.kl_in=reward", "algo.dual_clip_c=3", "algo.loss_agg=seq_mean_token_sum_norm") == []


def test_dr_grpo_constant_defaults_to_the_generation_budget():
    cfg = to_config(compose("algo.loss_agg=seq_mean_token_sum_norm", "generation.max_new_tokens=40"))
    assert cfg.algo.loss_norm_tokens == 40


def test_self_reward_checkpoint_must_hold_safetensors(tmp_path):
    from types import SimpleNamespace

    from rlhf.config import RewardConfig
    from rlhf.preflight import self_reward_errors

    lora = tmp_path / "sft"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    (lora / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    (lora / "other.safetensors").write_bytes(b"")
    cfg = SimpleNamespace(reward=RewardConfig(name="self_reward", checkpoint=str(lora)))
    assert self_reward_errors(cfg) == [f"reward.checkpoint: {lora} has no adapter_model.safetensors (pickled "
                                       "adapters are not loaded)"]
