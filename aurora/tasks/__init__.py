"""Recipes by name. Each lives in its own module, imported only when asked for."""

import importlib

from aurora.config import ConfigError
from aurora.tasks.base import Task

_TASKS = {"codec": "aurora.tasks.codec:CodecTask", "lm": "aurora.tasks.lm:LMTask", "dpo": "aurora.tasks.dpo:DPOTask",
          "diffusion": "aurora.tasks.diffusion:DiffusionTask", "lcm": "aurora.tasks.lcm:LCMTask"}


def get_task(name: str) -> type[Task]:
    if name not in _TASKS:
        raise ConfigError(f"config: unknown task '{name}'; available: {', '.join(sorted(_TASKS))}")
    module, _, cls = _TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["Task", "get_task"]
