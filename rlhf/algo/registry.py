"""Algorithms by name. Each module in rlhf/algo/ that defines one decorates it with `register`; `load_algorithms`
imports every module of the package once, so adding an algorithm is one module plus one YAML (conf/algo/<name>.yaml,
whose defaults list names its schema node `<name>_schema`)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, List

from hydra.core.config_store import ConfigStore

import rlhf.algo
from rlhf.config import AlgoConfig, register_configs

ALGORITHMS: Dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: makes `algo=<cls.name>` available (cls subclasses rlhf.algo.base.Algorithm)."""
    if ALGORITHMS.get(cls.name, cls) is not cls:
        raise ValueError(f"algorithm {cls.name!r} registered twice ({ALGORITHMS[cls.name].__module__}, {cls.__module__})")
    ALGORITHMS[cls.name] = cls
    return cls


def load_algorithms() -> Dict[str, type]:
    """Imports every module of rlhf.algo (each registers what it defines); returns the registry."""
    for mod in pkgutil.iter_modules(rlhf.algo.__path__):
        importlib.import_module(f"rlhf.algo.{mod.name}")
    return ALGORITHMS


def algorithm_names() -> List[str]:
    return sorted(load_algorithms())


def build_algorithm(cfg: AlgoConfig):
    """The registered algorithm for cfg.name, holding cfg (whose type must be that algorithm's schema)."""
    algos = load_algorithms()
    if cfg.name not in algos:
        raise ValueError(f"algo.name: {cfg.name!r} is not one of {sorted(algos)}")
    return algos[cfg.name](cfg)


def algo_name_errors(cfg: AlgoConfig) -> List[str]:
    """algo.name must be a registered algorithm whose schema is the config's type (algo.name=grpo on top of the ppo
    config would silently train PPO's keys with GRPO's estimator)."""
    algos = load_algorithms()
    if cfg.name not in algos:
        return [f"algo.name: {cfg.name!r} is not one of {sorted(algos)} (choose with algo=<name>, not algo.name=)"]
    if type(cfg) is not algos[cfg.name].schema:
        return [f"algo.name: {cfg.name!r} does not match the selected config ({type(cfg).__name__}); choose the "
                f"algorithm with algo={cfg.name}, not algo.name={cfg.name}"]
    return []


def register_training_configs() -> None:
    """The Hydra schemas of a training run: the top-level config and `algo/<name>_schema` for every algorithm."""
    register_configs()
    cs = ConfigStore.instance()
    for name, cls in load_algorithms().items():
        cs.store(group="algo", name=f"{name}_schema", node=cls.schema)
