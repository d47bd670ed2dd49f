"""Linear warm-up, then cosine decay to a floor or exponential decay."""

import math

import torch

from aurora.config.schema import LRSchedule, OptimConfig


def lr_factor(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """Cosine schedule: multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def exponential_factor(step: int, warmup_steps: int, gamma: float) -> float:
    """Exponential schedule: multiplier for optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return gamma ** (step - warmup_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if cfg.schedule == LRSchedule.exponential:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: exponential_factor(step, cfg.warmup_steps, cfg.gamma))
    decay = cfg.decay_steps if cfg.decay_steps is not None else max_steps - cfg.warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, decay, cfg.min_lr_ratio)
    )
