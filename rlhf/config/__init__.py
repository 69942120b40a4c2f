"""Typed configuration: one frozen-schema dataclass per Hydra config group (rlhf/config/schema.py) and the value checks
types cannot express (rlhf/config/checks.py: negative lengths, unknown choices, batch sizes that do not divide), which
raise ``ConfigError`` with the dotted key at the start of each line. Import from ``rlhf.config``."""

from rlhf.config.checks import (
    CHOICES,
    GENERATED_DATASETS,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    as_dict,
    config_errors,
    model_config_from_dict,
    share_base_obstacle,
    to_config,
    validate,
)
from rlhf.config.schema import (
    AlgoConfig,
    Config,
    ConfigError,
    DatasetConfig,
    GenerationConfig,
    HardwareConfig,
    JudgeConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    RewardConfig,
    SFTConfig,
    TinyModelConfig,
    range_errors,
    register_configs,
)

__all__ = [
    "AlgoConfig", "CHOICES", "Config", "ConfigError", "DatasetConfig", "GENERATED_DATASETS", "GenerationConfig",
    "HardwareConfig", "JudgeConfig", "LoggingConfig", "LoraConfig", "ModelConfig", "NON_NEGATIVE", "POSITIVE",
    "RewardConfig", "SFTConfig", "TinyModelConfig", "UNIT_INTERVAL", "as_dict", "config_errors",
    "model_config_from_dict", "range_errors", "register_configs", "share_base_obstacle", "to_config", "validate",
]
