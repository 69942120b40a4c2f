"""Config validation on the composed Hydra config, without a run: batch shapes, and every preset of every group
(start-up failures of the real CLI: tests/e2e/test_train_e2e.py)."""

import pytest
from helpers import ROOT
from hydra import compose, initialize_config_dir

from rlhf.algo.registry import register_training_configs
from rlhf.config import ConfigError, to_config


def compose_cfg(*overrides: str):
    register_training_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("micro,ok", [(0, True), (1, True), (2, True), (4, True), (3, False), (8, False), (-2, False)])
def test_micro_batch_size_must_divide_minibatch_size(micro, ok):
    cfg = compose_cfg("algo.prompts_per_step=2", "algo.samples_per_prompt=4", "algo.minibatch_size=4",
                      f"algo.micro_batch_size={micro}")
    if ok:
        assert to_config(cfg).algo.micro_batch_size == micro
    else:
        with pytest.raises(ConfigError, match=rf"^algo\.micro_batch_size: {micro} must be 0 .* minibatch_size = 4"):
            to_config(cfg)


# presets that need a companion choice to be valid on their own
COMPANIONS = {
    "model=hf": ["model.name_or_path=some/model"],
    "judge=math_onpolicy": ["reward=lora_judge"],  # judge.policy_pairs trains a judge in the run
}


def test_valid_configs_compose_for_every_group_option():
    for group in ("model", "dataset", "reward", "judge", "algo", "hardware", "experiment"):
        for f in sorted((ROOT / "conf" / group).glob("*.yaml")):
            if group == "experiment" and f.stem.startswith("table_"):
                continue  # paper tables compose with conf/tables.yaml (tests/unit/test_tables.py)
            overrides = [f"{group}={f.stem}", *COMPANIONS.get(f"{group}={f.stem}", [])]
            cfg = compose_cfg(*overrides)
            try:
                to_config(cfg)
            except ConfigError as e:  # presets may need a companion choice (e.g. grpo batch shapes); say which
                pytest.fail(f"{group}={f.stem}: {e}")


def test_pairwise_signal_refused_for_a_reference_guided_judge():
    """Comparing a reply with the reference the judge is already shown would let the reference judge itself."""
    with pytest.raises(ConfigError, match=r"^reward\.judge_signal: pairwise .* judge\.reference=answer"):
        to_config(compose_cfg("reward=lora_judge", "reward.judge_signal=pairwise"))
    cfg = to_config(compose_cfg("reward=lora_judge", "reward.judge_signal=pairwise", "judge.reference=none"))
    assert cfg.reward.judge_signal == "pairwise" and cfg.judge.reference == "none"
    headline = to_config(compose_cfg("reward=lora_judge", "algo=ppo"))
    assert (headline.reward.judge_signal, headline.judge.reference) == ("pointwise", "answer")
    assert to_config(compose_cfg("experiment=paper_lora_judge_ppo_7b")).judge.reference == "none"


@pytest.mark.parametrize("overrides,match", [
    (["reward.robust=r3m"], r"^reward\.robust: r3m is a bt_rm training loss; reward\.name is exact_match"),
    (["reward=bt_rm", "reward.robust=huber"], r"^reward\.robust: 'huber' is not one of"),
    (["reward=bt_rm", "reward.robust=r3m", "reward.checkpoint=some/dir"], r"^reward\.robust: r3m changes how"),
    (["reward=bt_rm", "reward.r3m_lambda=1.0"], r"^reward\.r3m_lambda: must be in \(0, 1\)"),
    (["reward=bt_rm", "reward.adaptive_rho=0.7"], r"^reward\.adaptive_rho: must be in \[0, log 2"),
    (["reward=bt_rm", "reward.adaptive_tau_min=2", "reward.adaptive_tau_max=1"], r"^reward\.adaptive_tau_min: need"),
    (["dataset.label_noise=1.5"], r"^dataset\.label_noise: must be in \[0, 1\]"),
    (["reward=routed", "reward.route_by=ensemble"], r"^reward\.route_by: ensemble routing reads .* is 0"),
    (["reward=routed", "reward.route_budget=1.5"], r"^reward\.route_budget: must be in \[0, 1\]"),
    (["reward=routed", "reward.route_judge=bt_rm"], r"^reward\.route_judge: 'bt_rm' is not one of"),
    (["reward.ensemble=3"], r"^reward\.ensemble: an ensemble of reward heads is a bt_rm option"),
    (["hardware.vllm_lora_sync=true"], r"^hardware\.vllm_lora_sync: adapter-only sync is for hardware\.rollout=vllm"),
    (["reward=rubric_judge", "judge.vllm=true"], r"^judge\.vllm: needs hardware\.rollout=vllm with"),
    (["reward=bt_rm", "judge.vllm=true"], r"^judge\.vllm: vLLM scores the rubric judge"),
    (["hardware=cpu_vllm", "hardware.vllm_lora_sync=true", "model.lora.enabled=false"],
     r"^hardware\.vllm_lora_sync: needs a LoRA actor"),
    (["reward=bt_rm", "reward.ensemble=3", "judge.lora.enabled=false"], r"^reward\.ensemble: the members are LoRA"),
    (["judge.policy_pairs=8"], r"^judge\.policy_pairs: on-policy pairs train a lora_judge / bt_rm in the run; "
                               r"reward\.name is exact_match"),
    (["reward=lora_judge", "judge.policy_pairs=8", "dataset=synthetic_chat"],
     r"^judge\.policy_pairs: replies are graded against reference answers"),
    (["reward=bt_rm", "judge.policy_pairs=8", "reward.checkpoint=some/dir"], r"^judge\.policy_pairs: reward\.check"),
    (["reward=lora_judge", "judge.policy_pairs=8", "judge.policy_fraction=0"], r"^judge\.policy_fraction: must be >"),
    (["reward=lora_judge", "judge.policy_fraction=1.5"], r"^judge\.policy_fraction: must be in \[0, 1\]"),
    (["reward=lora_judge", "judge.policy_samples=0"], r"^judge\.policy_samples: must be > 0"),
    (["reward.init_actor_from_sft=true"], r"^reward\.init_actor_from_sft: only reward=self_reward"),
    (["reward=self_reward", "model.lora.enabled=false", "reward.init_actor_from_sft=true"],
     r"^reward\.init_actor_from_sft: needs a LoRA actor"),
])
def test_robust_reward_keys_are_checked_at_start_up(overrides, match):
    with pytest.raises(ConfigError, match=match):
        to_config(compose_cfg(*overrides))


def test_robust_bt_options_compose():
    cfg = to_config(compose_cfg("reward=bt_rm", "reward.robust=adaptive", "dataset.label_noise=0.2"))
    assert (cfg.reward.robust, cfg.dataset.label_noise) == ("adaptive", 0.2)
