"""Test hooks that inject faults at named points of the loop, read from the environment.

``AURORA_FAULT_NAN_LOSS="3,5"`` makes the loss of optimizer steps 3 and 5 non-finite;
``"3@1"`` only on rank 1. Unset in normal runs: then every hook is a no-op.
"""

import os

import torch


def _steps_for_rank(variable: str, rank: int) -> set[int]:
    steps = set()
    for item in filter(None, os.environ.get(variable, "").split(",")):
        step, _, only_rank = item.partition("@")
        if not only_rank or int(only_rank) == rank:
            steps.add(int(step))
    return steps


def maybe_poison_loss(loss: torch.Tensor, step: int, rank: int) -> torch.Tensor:
    if step in _steps_for_rank("AURORA_FAULT_NAN_LOSS", rank):
        return loss * float("nan")
    return loss
