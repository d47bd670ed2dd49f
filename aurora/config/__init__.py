from aurora.config.load import ConfigError, load_config, peek_task, to_yaml
from aurora.config.schema import TrainConfig

__all__ = ["ConfigError", "TrainConfig", "load_config", "peek_task", "to_yaml"]
