"""Recipes by name. Each lives in its own module, imported only when asked for."""

import importlib
from pathlib import Path

from aurora.config import ConfigError, load_config, peek_task
from aurora.tasks.base import Task

_TASKS = {"codec": "aurora.tasks.codec:CodecTask", "lm": "aurora.tasks.lm:LMTask", "dpo": "aurora.tasks.dpo:DPOTask",
          "diffusion": "aurora.tasks.diffusion:DiffusionTask", "lcm": "aurora.tasks.lcm:LCMTask"}


def get_task(name: str) -> type[Task]:
    if name not in _TASKS:
        raise ConfigError(f"config: unknown task '{name}'; available: {', '.join(sorted(_TASKS))}")
    module, _, cls = _TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def run_config(run_dir: str | Path, schema: type, recipes: str):
    """The config of training run ``run_dir``, whose recipe's config must be ``schema`` or a
    subclass of it: FileNotFoundError without a config.yaml, ConfigError naming what it should be
    (``recipes``) otherwise."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run: it has no config.yaml")
    task = peek_task(config)
    task_schema = get_task(task).config_class
    if not issubclass(task_schema, schema):
        raise ConfigError(f"{run_dir} is a '{task}' run, not {recipes}")
    return load_config(task_schema, config)


__all__ = ["Task", "get_task", "run_config"]
