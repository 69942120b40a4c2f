"""`python -m rlhf.sft [model=...] [dataset=...] [sft.key=value ...]`: supervised fine-tuning on demonstrations.

Trains pi_SFT for reward=self_reward (and anyone who wants an SFT start): a LoRA adapter (sft.lora=true, model.lora's
rank and targets) or the full model, on the train split's demonstrations (math: reference worked solutions;
chat: reference replies; hub sets through dataset.hub_id / dataset.path). Writes to the run dir: config.yaml,
metrics.jsonl (sft/loss per step), metrics.png, summary.json (held-out reply NLL before / after) and the model in
`sft/` (safetensors), which `reward=self_reward reward.checkpoint=<run dir>/sft` loads.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from rlhf.config import (
    ConfigError,
    DatasetConfig,
    HardwareConfig,
    LoggingConfig,
    ModelConfig,
    SFTConfig,
    config_errors,
    register_configs,
)
from rlhf.model.device import resolve_device
from rlhf.model.load import load_causal_lm
from rlhf.report.io import atomic_write_json, atomic_write_text
from rlhf.report.logger import MetricsLogger
from rlhf.report.plots import plot_metrics
from rlhf.reward.self_reward import run_sft, save_sft, sft_models
from rlhf.task import TASK_DATASETS

log = logging.getLogger("rlhf")


@dataclass
class SFTRunConfig:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    hardware: HardwareConfig = MISSING
    sft: SFTConfig = field(default_factory=SFTConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(wandb="disabled"))
    seed: int = 0
    run_dir: Optional[str] = None  # null: Hydra's output dir


def run_errors(cfg: SFTRunConfig) -> list:
    errors = config_errors(cfg)
    if cfg.dataset.name not in TASK_DATASETS:
        errors.append(f"dataset.name: {cfg.dataset.name} has no demonstrations; SFT trains on the reference "
                      f"solutions / replies of {list(TASK_DATASETS)}")
    return errors


def sft(cfg: SFTRunConfig, run_dir: Path) -> dict:
    errors = run_errors(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    device = resolve_device(cfg.hardware)
    base, tokenizer = load_causal_lm(cfg.model, dtype=cfg.hardware.dtype, seed=cfg.seed)
    base.to(device)
    model, _ = sft_models(base, cfg.sft, cfg.model, cfg.seed)
    logger = MetricsLogger(run_dir, cfg.logging, OmegaConf.to_container(OmegaConf.structured(cfg)))
    info = run_sft(model, tokenizer, cfg.dataset, cfg.sft, cfg.seed,
                   log_fn=lambda m, s: logger.log(m, s, prefix="sft"))
    logger.close()
    out = save_sft(model, run_dir / "sft")
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png")
    summary = {**info, "model": str(out), "kind": "lora" if cfg.sft.lora else "full",
               "command": " ".join(["python -m rlhf.sft", *sys.argv[1:]])}
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


register_configs()
ConfigStore.instance().store(name="sft_schema", node=SFTRunConfig)


@hydra.main(version_base=None, config_path="../conf", config_name="sft")
def main(dcfg: DictConfig) -> None:
    try:
        cfg: SFTRunConfig = OmegaConf.to_object(dcfg)
        errors = run_errors(cfg)
        if errors:  # refused before anything is written
            raise ConfigError("\n".join(errors))
        run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(dcfg, resolve=True))
        summary = sft(cfg, run_dir)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    log.info("sft: held-out NLL per token %.3f -> %.3f; model in %s", summary["heldout_nll_before"],
             summary["heldout_nll_after"], summary["model"])


if __name__ == "__main__":
    main()
