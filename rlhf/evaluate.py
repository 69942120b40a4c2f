"""Evaluation entry point: `python -m rlhf.evaluate task=<gsm8k|rewardbench|preference> ...`.

File-based (score results produced anywhere, with the same code the trainer uses):
  task=gsm8k predictions=FILE.jsonl output=OUT.json           lines: {"answer": <GSM8K reference>, "response": ...}
  task=rewardbench scores=FILE.jsonl output=OUT.json          lines: {"subset", "score_chosen", "score_rejected"}
  task=preference scores=FILE.jsonl output=OUT.json           same lines; plain accuracy per subset
Model-based (generate or score with a model from the config groups):
  task=gsm8k model=... dataset=synthetic_math checkpoint=DIR  greedy EM on the test split
  task=rewardbench reward=rubric_judge dataset=rewardbench    score pairs with a judge/RM, then weight
  task=judge_robustness reward=... limit=60                  master-key replies vs real ones: false-positive rates
  task=routing reward=routed limit=120                       RM + judge accuracy against the judge-call fraction
  task=rewardbench2 scores=FILE.jsonl | dataset=rewardbench2 reward=...   best-of-4 subsets, Ties, unweighted mean
  task=rationales reward=rubric_judge|lora_judge limit=40    judge explanations vs reference rationales (embeddings)
  task=judge_on_policy reward=lora_judge reward.checkpoint=DIR [checkpoint=POLICY | predictions=FILE] samples=8
                                                             does the reward rank the policy's own replies right?
Bad input (a missing key, a bad value, an input file that is missing, empty or malformed, scores that are not finite
numbers) is refused before anything is written: one `error: <key>: ...` line per problem on stderr, exit status 2.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from rlhf.config import (
    ConfigError,
    DatasetConfig,
    GenerationConfig,
    HardwareConfig,
    JudgeConfig,
    ModelConfig,
    RewardConfig,
    config_errors,
    register_configs,
)
from rlhf.config.checks import MATH_DATASETS
from rlhf.dataset.prefs import PREF_DATASETS
from rlhf.report.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# task name -> "module:function"; each function takes EvaluateConfig and returns (results dict, markdown table or "")
TASKS = {
    "gsm8k": "rlhf.eval.gsm8k:run_task",
    "rewardbench": "rlhf.eval.rewardbench:run_task",
    "preference": "rlhf.eval.rewardbench:run_preference_task",
    "judge_robustness": "rlhf.eval.judge_robustness:run_task",
    "routing": "rlhf.eval.routing:run_task",
    "rewardbench2": "rlhf.eval.rewardbench2:run_task",
    "rationales": "rlhf.eval.rationales:run_task",
    "judge_on_policy": "rlhf.eval.judge_on_policy:run_task",
}


@dataclass
class EvaluateConfig:
    task: str = MISSING
    output: str = MISSING
    predictions: Optional[str] = None
    scores: Optional[str] = None
    checkpoint: Optional[str] = None  # trained policy / adapter / RM dir for model-based evaluation
    limit: int = 0  # evaluate at most this many examples (0: all)
    samples: int = 8  # task=judge_on_policy: sampled replies per test problem
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


# Model modes, kept here so that the start-up checks import neither torch nor datasets (a test pins JUDGE_KINDS to
# rlhf.judge.factory's; MATH_DATASETS is rlhf.config's, which rlhf.dataset.math_data reads too).
JUDGE_KINDS = ("rubric_judge", "lora_judge", "bt_rm")
# the file each file-mode task reads, and the other file key, which that task does not read
INPUT_KEY = {"gsm8k": "predictions", "rewardbench": "scores", "preference": "scores", "rewardbench2": "scores"}
MISSING_HINTS = {"task": f"pass task={'|'.join(TASKS)}", "output": "pass output=OUT.json"}


def resolve_task(name: str):
    if name not in TASKS:
        raise ConfigError(f"task: {name!r} is not one of {sorted(TASKS)}")
    module, fn = TASKS[name].split(":")
    return getattr(importlib.import_module(module), fn)


def _path_errors(cfg: EvaluateConfig, skip: Collection[str]) -> List[str]:
    """Paths: given ones must not be blank, inputs must exist, the output must not clobber an input or itself."""
    errors: List[str] = []
    for key in ("output", "predictions", "scores", "checkpoint"):
        value = getattr(cfg, key)
        if key in skip or value is None:
            continue
        if not str(value).strip():
            errors.append(f"{key}: empty path; pass {key}=PATH or leave it out")
        elif key == "checkpoint" and not Path(value).expanduser().is_dir():
            errors.append(f"checkpoint: {value} is not a directory (a training run's checkpoints/step_N, or an "
                              f"rlhf.sft output's sft/)")
        elif key in ("predictions", "scores") and not Path(value).expanduser().exists():
            errors.append(f"{key}: {value} does not exist")
    out = cfg.output
    if "output" not in skip and out is not None and str(out).strip():
        path = Path(out).expanduser()
        if path.is_dir():
            errors.append(f"output: {out} is a directory; pass a file name (output=OUT.json)")
        elif path.suffix == ".md":
            errors.append(f"output: {out} ends in .md, the name of the markdown table written next to it; "
                          "use output=OUT.json")
        written = {path.resolve(), path.resolve().with_suffix(".md")}
        for key in ("predictions", "scores"):
            given = getattr(cfg, key)
            if given and str(given).strip() and Path(given).expanduser().resolve() in written:
                errors.append(f"output: {out} (and its .md table) would overwrite the {key} file {given}; "
                              "pick another name")
    return errors


def _mode_errors(cfg: EvaluateConfig) -> List[str]:
    """The task needs its file, or a model mode it can run; a file the task does not read is an error, not ignored."""
    errors: List[str] = []
    task = cfg.task
    if task == "rationales":  # model mode only: a judge explains its verdicts
        errors += [f"{key}: task={task} reads no file; the judge writes the rationales it is scored on"
                   for key in ("predictions", "scores") if getattr(cfg, key) is not None]
        if cfg.reward.name not in ("rubric_judge", "lora_judge"):
            errors.append(f"reward.name: task=rationales needs a judge that writes explanations (rubric_judge or "
                          f"lora_judge); got {cfg.reward.name}")
        return errors
    if task == "routing":  # model mode only: an RM and a judge score the preference source's test pairs
        errors += [f"{key}: task={task} reads no file; it scores the test pairs with an RM and a judge"
                   for key in ("predictions", "scores") if getattr(cfg, key) is not None]
        if cfg.reward.name != "routed":
            errors.append(f"reward.name: task=routing needs reward=routed (its RM, judge and routing keys); got "
                          f"{cfg.reward.name}")
        return errors
    if task == "judge_on_policy":  # the policy's replies (generated here, or a file) scored by a judge/RM
        if cfg.scores is not None:
            errors.append("scores: task=judge_on_policy does not read it; pass predictions=FILE (replies) or none")
        if cfg.predictions is not None and cfg.checkpoint is not None:
            errors.append("checkpoint: task=judge_on_policy with predictions= scores those replies and generates "
                          "none; drop one of them")
        if cfg.reward.name not in JUDGE_KINDS:
            errors.append(f"reward.name: task=judge_on_policy scores replies with a judge/RM "
                          f"({'|'.join(JUDGE_KINDS)}); got {cfg.reward.name}")
        if cfg.predictions is None and cfg.dataset.name not in MATH_DATASETS:
            errors.append(f"dataset.name: task=judge_on_policy grades replies to math problems "
                          f"({'|'.join(MATH_DATASETS)}); got {cfg.dataset.name!r}")
        if cfg.samples < 1:
            errors.append(f"samples: must be >= 1, got {cfg.samples}")
        return errors
    if task == "judge_robustness":  # model mode only: the reward source under test scores generated probes
        errors += [f"{key}: task={task} reads no file; it scores master-key replies with reward={cfg.reward.name}"
                   for key in ("predictions", "scores") if getattr(cfg, key) is not None]
        if cfg.checkpoint is not None and cfg.reward.name not in ("lora_judge", "bt_rm"):
            errors.append(f"checkpoint: reward={cfg.reward.name} loads no trained judge/RM; drop checkpoint")
        return errors
    wanted = INPUT_KEY[task]
    other = "scores" if wanted == "predictions" else "predictions"
    if getattr(cfg, other) is not None:
        errors.append(f"{other}: task={task} does not read it; pass {wanted}=FILE.jsonl")
    if getattr(cfg, wanted) is not None:  # file mode
        if cfg.checkpoint is not None:
            errors.append(f"checkpoint: task={task} with {wanted}= scores that file and uses no checkpoint; "
                          f"drop one of them")
        return errors
    if task == "gsm8k":  # model mode: greedy replies of cfg.model on a math test split
        if cfg.dataset.name not in MATH_DATASETS:
            errors.append(f"predictions: missing; pass predictions=FILE.jsonl, or generate with the model on a math "
                          f"dataset (dataset={'|'.join(MATH_DATASETS)}; got dataset.name={cfg.dataset.name!r})")
    else:  # model mode: a judge/RM scores a preference test split
        if cfg.reward.name not in JUDGE_KINDS:
            errors.append(f"scores: missing; pass scores=FILE.jsonl, or score pairs with a judge/RM "
                          f"(reward={'|'.join(JUDGE_KINDS)}; got reward.name={cfg.reward.name!r})")
        elif task == "rewardbench2" and cfg.dataset.name != "rewardbench2":
            errors.append(f"dataset.name: task=rewardbench2 with reward={cfg.reward.name} scores RewardBench 2 rows; "
                          f"pass dataset=rewardbench2 (got {cfg.dataset.name!r})")
        elif task != "rewardbench2" and cfg.dataset.name not in PREF_DATASETS:
            errors.append(f"dataset.name: {cfg.dataset.name!r} is not a preference dataset; task={task} with "
                          f"reward={cfg.reward.name} scores the test split of one of {list(PREF_DATASETS)}")
    return errors


def input_errors(cfg: EvaluateConfig, skip: Collection[str] = ()) -> List[str]:
    """Every problem with an EvaluateConfig, one '<key>: ...' line each (empty: fine). Reads and writes no file.

    `skip`: keys already reported (missing mandatory values) whose placeholder values are not checked."""
    errors: List[str] = []
    if "task" not in skip and cfg.task not in TASKS:
        errors.append(f"task: {cfg.task!r} is not one of {list(TASKS)}")
    if "task" not in skip and cfg.task in TASKS:
        errors += _mode_errors(cfg)
    errors += _path_errors(cfg, skip)
    if cfg.limit < 0:
        errors.append(f"limit: must be >= 0 (0: all examples), got {cfg.limit}")
    if cfg.seed < 0:
        errors.append(f"seed: must be >= 0, got {cfg.seed}")
    own: Dict[str, str] = {}
    for line in errors:  # one line per key: the first (a file the task does not read need not exist either)
        own.setdefault(line.split(":")[0], line)
    return list(own.values()) + [e for e in config_errors(cfg) if e.split(":")[0] not in own]


def evaluate(cfg: EvaluateConfig) -> Dict[str, Any]:
    """Checks cfg (ConfigError listing every problem), runs the task, then writes OUT.json and OUT.md.

    Nothing is written unless the task succeeded; the two files are each replaced atomically, and when the second
    write fails the first is removed, so a failed run never leaves a result behind."""
    errors = input_errors(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    run = resolve_task(cfg.task)
    results, markdown = run(cfg)
    out = Path(cfg.output).expanduser()
    written = False
    try:
        atomic_write_json(out, results)
        written = True
        if markdown:
            atomic_write_text(out.with_suffix(".md"), markdown)
    except OSError as e:
        if written:
            out.unlink(missing_ok=True)
        raise ConfigError(f"output: cannot write {cfg.output} ({e.strerror or e})") from None
    return results


register_configs()
ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def _missing_keys(node: DictConfig, prefix: str = "") -> List[str]:
    """Dotted keys of every mandatory value (???) left unset."""
    keys: List[str] = []
    for key in node:
        if OmegaConf.is_missing(node, key):
            keys.append(f"{prefix}{key}")
        else:
            child = node[key]
            if isinstance(child, DictConfig):
                keys += _missing_keys(child, f"{prefix}{key}.")
    return keys


def _missing_line(key: str) -> str:
    return f"{key}: missing; {MISSING_HINTS.get(key, f'pass {key}=VALUE')}"


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e) or type(e).__name__


def fail(lines: List[str]) -> None:
    """One 'error: ...' line per problem on stderr, exit status 2."""
    for line in lines:
        for part in str(line).splitlines():
            if part.strip():
                print(f"error: {part}", file=sys.stderr)
    sys.exit(2)


def load_config(dcfg: DictConfig) -> EvaluateConfig:
    """DictConfig -> EvaluateConfig; ConfigError naming every missing mandatory key and every bad value at once."""
    missing = _missing_keys(dcfg)
    placeholders = [k for k in missing if k in MISSING_HINTS]  # str fields: a placeholder lets the rest be checked
    if len(placeholders) < len(missing):
        raise ConfigError("\n".join(_missing_line(k) for k in missing))
    if missing:
        dcfg = dcfg.copy()
        for key in missing:
            OmegaConf.update(dcfg, key, "", force_add=False)
    cfg: EvaluateConfig = OmegaConf.to_object(dcfg)
    errors = [_missing_line(k) for k in missing] + input_errors(cfg, skip=missing)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


@hydra.main(version_base=None, config_path="../conf", config_name="evaluate")
def main(dcfg: DictConfig) -> None:
    try:
        cfg = load_config(dcfg)
        results = evaluate(cfg)
    except MissingMandatoryValue as e:
        fail([_missing_line(getattr(e, "full_key", None) or "config")])
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        fail([_message(e)])
    summary = {k: v for k, v in results.items() if not isinstance(v, (list, dict))}
    print(json.dumps(summary, indent=2))
    print(f"wrote {cfg.output}")


if __name__ == "__main__":
    main()
