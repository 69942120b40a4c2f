"""reward=self_reward end to end on the tiny model: SFT inside the run (LoRA, on the actor's base) with resume, SFT by
`python -m rlhf.sft` loaded as a checkpoint, and chat prompts with a full-SFT pi_SFT."""

import json
import subprocess
import sys

from helpers import ROOT
from safetensors.torch import load_file

from test_train_e2e import run_train

RL = ["reward=self_reward", "algo=grpo", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
      "algo.minibatch_size=4", "sft.steps=2", "sft.num_eval=4"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_in_run_sft_on_the_actor_base_then_grpo_and_resume(tmp_path):
    args = [*RL, "model.lora.enabled=true", "model.lora.target_modules=[q_proj,v_proj]", "save_every=1"]
    run_train(tmp_path, "steps=2", *args)
    rows = _rows(tmp_path)
    sft_rows = [r for r in rows if "sft/loss" in r]
    steps = [r for r in rows if "reward_mean" in r]
    assert len(sft_rows) == 2 and all(r["phase"] == "sft" for r in sft_rows)
    assert len(steps) == 2 and all("reward/self_reward_mean" in r and "em_flexible" in r for r in steps)
    assert (tmp_path / "sft" / "adapter_config.json").is_file()
    assert "second adapter on the actor's base" in (tmp_path / "train.log").read_text()
    adapter = load_file(str(tmp_path / "checkpoints" / "step_000002" / "adapter" / "adapter_model.safetensors"))
    assert adapter and not any(".sft." in k for k in adapter)  # the actor's checkpoint holds the actor only
    assert "SFT held-out NLL per token" in (tmp_path / "summary.md").read_text()
    run_train(tmp_path, "steps=3", "resume=auto", *args)  # the run's SFT adapter is reused, not trained again
    rows = _rows(tmp_path)
    assert len([r for r in rows if "sft/loss" in r]) == 2
    assert [r["step"] for r in rows if "reward_mean" in r] == [1, 2, 3]


def test_sft_cli_output_is_a_self_reward_checkpoint(tmp_path):
    sft_dir = tmp_path / "sft_run"
    cmd = [sys.executable, "-m", "rlhf.sft", "model=tiny_random", "sft.steps=3", "sft.num_eval=4", "sft.eval_em=2",
           "sft.eval_max_new_tokens=8",
           "dataset.num_train=32", "dataset.num_test=8", f"hydra.run.dir={sft_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((sft_dir / "summary.json").read_text())
    assert summary["kind"] == "lora" and summary["steps"] == 3
    assert summary["em_before"]["n"] == 2 and 0.0 <= summary["em_after"]["em_strict"] <= 1.0  # SFT alone, held out
    assert {"config.yaml", "metrics.jsonl", "metrics.png", "summary.json"} <= {p.name for p in sft_dir.iterdir()}
    out = tmp_path / "sft_eval.json"  # SFT alone on held-out problems: the adapter dir is an evaluate checkpoint
    proc = subprocess.run([sys.executable, "-m", "rlhf.evaluate", "task=gsm8k", "model=tiny_random",
                           f"checkpoint={sft_dir / 'sft'}", "limit=2", "generation.eval_max_new_tokens=8",
                           f"output={out}", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["n"] == 2
    run = tmp_path / "rl"
    run_train(run, "steps=1", *RL, f"reward.checkpoint={sft_dir / 'sft'}")
    assert not (run / "sft").exists()  # loaded, not trained
    assert [r for r in _rows(run) if "reward_mean" in r]
    assert [r for r in _rows(run) if "reward_mean" in r][0]["kl"] == 0.0  # from the base: policy = its reference
    # the paper's recipe: the actor starts from pi_SFT (a LoRA actor of the SFT adapter's shape); KL to the base is
    # then non-zero from the first step on
    init = tmp_path / "rl_init"
    run_train(init, "steps=1", *RL, f"reward.checkpoint={sft_dir / 'sft'}", "model.lora.enabled=true",
              "reward.init_actor_from_sft=true")
    assert "the actor starts from pi_SFT" in (init / "train.log").read_text()
    first = [r for r in _rows(init) if "reward_mean" in r][0]
    assert first["kl"] != 0.0
    bad = run_train(tmp_path / "bad_init", "steps=1", *RL, f"reward.checkpoint={sft_dir / 'sft'}",
                    "model.lora.enabled=true", "model.lora.r=8", "reward.init_actor_from_sft=true", check=False)
    assert bad.returncode != 0 and "reward.init_actor_from_sft: SFT adapter r=16" in bad.stderr, bad.stderr[-2000:]
    bad = run_train(tmp_path / "bad", "steps=1", *RL, f"reward.checkpoint={sft_dir}", check=False)
    assert bad.returncode == 2 and "reward.checkpoint:" in bad.stderr and "rlhf.sft" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "rlhf.sft", "model=tiny_random", "dataset=synthetic_prefs",
                          f"hydra.run.dir={tmp_path / 'bad_sft'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "error: dataset.name: synthetic_prefs has no demonstrations" in bad.stderr


def test_chat_prompts_with_a_full_sft_model(tmp_path):
    run_train(tmp_path, "steps=1", *RL, "dataset=synthetic_chat", "sft.lora=false", "num_eval=3")
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task"] == "chat" and summary["eval_after"]["n"] == 3
    assert "full SFT" in (tmp_path / "train.log").read_text()
