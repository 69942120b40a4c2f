"""Start-up checks of everything a run reads, before it writes anything or loads a model.

`input_errors(cfg)` returns every problem at once as one line each, '<key>: <what is wrong>' (the config's own values,
then the files and paths the config names: dataset files, model dirs, reward/judge checkpoints, the judge rubric and
demonstrations, the resume checkpoint). The entry points print them and exit 2; a run that passes can still fail later,
but not on input a cheap look could have refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List

from safetensors import safe_open

from rlhf.algo.registry import algo_name_errors
from rlhf.backend.checkpoint import refuse_legacy_pickle
from rlhf.config import Config, ConfigError, config_errors
from rlhf.judge.bt_rm import META as RM_META
from rlhf.judge.lora_judge import META as JUDGE_META
from rlhf.judge.prompts import load_demo_pool, parse_rubric
from rlhf.task import CHAT_TASK_DATASETS, TASK_DATASETS, build_task

JUDGE_REWARDS = ("rubric_judge", "lora_judge")


def looks_local(name: str) -> bool:
    """A model name that can only mean a local path (a hub id is 'org/name', never absolute or dotted-relative)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or os.path.exists(os.path.expanduser(name))


def safetensors_errors(files: List[Path], key: str) -> List[str]:
    """Each safetensors file must have a readable header whose tensors fit in the file (a truncated copy does not)."""
    errors = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except Exception as e:  # safetensors raises its own SafetensorError, or OSError for unreadable files
            errors.append(f"{key}: {f} is not a readable safetensors file ({str(e).splitlines()[0][:120]})")
    return errors


def model_errors(cfg: Config) -> List[str]:
    m = cfg.model
    if m.source != "hf" or not looks_local(m.name_or_path):
        return []
    path = Path(m.name_or_path).expanduser()
    if not path.is_dir():
        return [f"model.name_or_path: local path {path} does not exist (a hub id looks like 'org/name')"]
    if not (path / "config.json").is_file():
        return [f"model.name_or_path: {path} has no config.json (not a transformers model directory)"]
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return [f"model.name_or_path: {path} has no tokenizer files (tokenizer.json / tokenizer_config.json)"]
    return safetensors_errors(sorted(path.glob("*.safetensors")), "model.name_or_path")


def dataset_errors(cfg: Config) -> List[str]:
    """RL trains on a prompt task; a local dataset file is read in full now so a bad row is found here."""
    d = cfg.dataset
    if d.name not in TASK_DATASETS:
        return [f"dataset: {d.name} is a preference-pair dataset with no prompts to train on; RL runs on "
                f"{list(TASK_DATASETS)} (preference datasets train and evaluate judges and reward models)"]
    errors = []
    if d.name in CHAT_TASK_DATASETS and cfg.reward.name == "exact_match":
        errors.append(f"reward: exact_match grades math answers; dataset={d.name} has chat prompts, scored by a judge "
                      "or reward model (reward=bt_rm, rubric_judge or lora_judge)")
    if not d.path:
        return errors  # generated data needs no check; a hub dataset is fetched by the run
    task = build_task(d)
    for split in ("train", "test"):
        try:
            task.items(split)
        except (FileNotFoundError, ValueError, KeyError) as e:
            line = one_line(e)
            if not line.startswith("dataset.path"):
                line = f"dataset.path: {d.path.replace('{split}', split)}: {line}"
            if line not in errors:
                errors.append(line)
    return errors


def self_reward_errors(cfg: Config) -> List[str]:
    """reward=self_reward with a checkpoint: a `python -m rlhf.sft` output (a LoRA adapter or a full model dir in
    safetensors; pickled weights are refused)."""
    if cfg.reward.name != "self_reward" or not cfg.reward.checkpoint:
        return []
    path = Path(cfg.reward.checkpoint).expanduser()
    if not path.is_dir():
        return [f"reward.checkpoint: {path} does not exist"]
    if not any((path / f).is_file() for f in ("adapter_config.json", "config.json")):
        return [f"reward.checkpoint: {path} has no adapter_config.json or config.json (not a `python -m rlhf.sft` "
                "output: a LoRA adapter or a full model dir)"]
    if (path / "adapter_config.json").is_file() and not (path / "adapter_model.safetensors").is_file():
        return [f"reward.checkpoint: {path} has no adapter_model.safetensors (pickled adapters are not loaded)"]
    weights = sorted(path.rglob("*.safetensors"))
    if not weights:
        return [f"reward.checkpoint: {path} has no .safetensors weights (pickled weights are not loaded)"]
    return safetensors_errors(weights, "reward.checkpoint")


def _scorer_checkpoint_errors(kind: str, value: str, key: str) -> List[str]:
    """A saved lora_judge / bt_rm dir: it exists, has its meta file and only safe safetensors."""
    path = Path(value).expanduser()
    if not path.is_dir():
        return [f"{key}: {path} does not exist"]
    if kind == "rubric_judge":
        return []
    meta = JUDGE_META if kind == "lora_judge" else RM_META
    errors = [] if (path / meta).is_file() else [f"{key}: {path} has no {meta} (not a {kind} checkpoint)"]
    return errors + safetensors_errors(sorted(path.rglob("*.safetensors")), key)


def judge_errors(cfg: Config) -> List[str]:
    name = cfg.reward.name
    if name not in JUDGE_REWARDS + ("bt_rm", "routed"):
        return []
    judge_kind = cfg.reward.route_judge if name == "routed" else name
    errors: List[str] = []
    if judge_kind in JUDGE_REWARDS:
        errors += _collect(lambda: parse_rubric(cfg.judge.rubric))
        if cfg.judge.demo_path:
            errors += _collect(lambda: load_demo_pool(cfg.judge))
    if cfg.reward.checkpoint:
        errors += _scorer_checkpoint_errors("bt_rm" if name == "routed" else name, cfg.reward.checkpoint,
                                            "reward.checkpoint")
    if name == "routed" and cfg.reward.judge_checkpoint:
        errors += _scorer_checkpoint_errors(judge_kind, cfg.reward.judge_checkpoint, "reward.judge_checkpoint")
    return errors


def resume_errors(cfg: Config) -> List[str]:
    if cfg.resume in (None, "auto"):
        return []
    path = Path(cfg.resume).expanduser()
    if not (path / "COMPLETE").is_file():
        return [f"resume: {path} is not a complete checkpoint (no COMPLETE marker)"]
    return _collect(lambda: refuse_legacy_pickle(path)) + safetensors_errors(sorted(path.rglob("*.safetensors")),
                                                                             "resume")


def _collect(check: Callable[[], object]) -> List[str]:
    try:
        check()
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        return [one_line(e)]
    return []


def one_line(e: BaseException) -> str:
    """The message of an exception as one line (KeyError quotes its message; drop that)."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def input_errors(cfg: Config) -> List[str]:
    """Every problem with the config's values and the inputs it names; [] when the run may start."""
    errors = algo_name_errors(cfg.algo) + config_errors(cfg)
    if errors:  # file checks on top of impossible values would mostly repeat them
        return errors
    for check in (model_errors, dataset_errors, judge_errors, self_reward_errors, resume_errors):
        errors += check(cfg)
    return errors
