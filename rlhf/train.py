"""`python -m rlhf.train [group=option ...] [key=value ...]`: one online RL run (or a sweep with -m).

Config groups: model, dataset, reward, judge, algo, hardware (see conf/ and README). `--help` lists them,
`--cfg job` prints the resolved config.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import List, NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlhf.backend.distributed import world_config_errors
from rlhf.algo.registry import register_training_configs
from rlhf.config import ConfigError, to_config
from rlhf.preflight import input_errors, one_line
from rlhf.report.io import atomic_write_text
from rlhf.trainer import StopTraining, Trainer

log = logging.getLogger("rlhf")
register_training_configs()


def fail(lines: List[str], code: int = 2, run_dir: Optional[Path] = None, detail: str = "") -> NoReturn:
    """Print each problem as one `error:` line (and append them, plus `detail`, to the run dir's train.log); exit."""
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    if run_dir is None and HydraConfig.initialized():
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    if run_dir is not None and run_dir.is_dir():
        with open(run_dir / "train.log", "a") as f:
            f.writelines(f"error: {line}\n" for line in lines)
            f.write(detail)
    sys.exit(code)


# what the project raises for bad input while a run starts (a file, a path, a checkpoint, a rubric): one line, exit 2
STARTUP_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, ValueError, KeyError, OSError)


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> float:
    try:
        cfg = to_config(dcfg)
    except ConfigError as e:
        fail(str(e).splitlines())
    errors = input_errors(cfg) + world_config_errors(cfg)  # world: batch sizes vs. the launcher's world size
    if errors:
        fail(errors)
    run_dir = Path(cfg.run_dir or HydraConfig.get().runtime.output_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(dcfg, resolve=True))
    try:
        trainer = Trainer(cfg, run_dir)
    except STARTUP_ERRORS as e:
        fail([f"{one_line(e)} (while starting; traceback in {run_dir / 'train.log'})"], run_dir=run_dir,
             detail=traceback.format_exc())
    try:
        summary = trainer.train()
    except StopTraining as e:
        log.error("%s", e)
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(3)
    finally:
        trainer.release()  # a multirun's next job runs in this process: free the rollout engine's memory
    trainer.dist.close()
    after = summary.get("eval_after", {})
    log.info("run dir: %s", run_dir)
    return float(after.get(trainer.task.headline, summary["final"].get("reward_mean", 0.0)))


if __name__ == "__main__":
    main()
