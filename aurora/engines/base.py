"""The one interface the training loop uses, whatever parallelism wraps the model."""

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from aurora.config.schema import EngineConfig, Precision, SyncMode, TrainConfig
from aurora.distributed import DistEnv
from aurora.distributed.mesh import node_mesh
from aurora.engines.capabilities import Capabilities

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class Engine(ABC):
    shards_parameters: bool = False
    """Whether each rank holds a part of the parameters (not a whole replica)."""

    @classmethod
    def capabilities(cls, cfg: EngineConfig) -> Capabilities:
        """What this engine can do with settings ``cfg`` (checked in ``aurora.engines.capabilities``)."""
        return Capabilities()

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg = cfg.engine
        self.trainer_cfg = cfg.trainer
        self.env = env
        self.hierarchical = cfg.sync.mode == SyncMode.hierarchical
        self.mesh = node_mesh(env) if self.hierarchical or self.cfg.fsdp.hsdp else None
        """The (replicate, shard) mesh of nodes, when the engine syncs by node."""

    def prepare(self, model: nn.Module, shard_units: list[nn.Module],
                make_optimizer: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module to train and its optimizer. ``shard_units`` are the blocks a sharding
        engine wraps one by one (transformer layers, codec stages); activation checkpointing and
        compilation apply per block, in place, so parameter names stay the model's own."""
        for unit in shard_units:
            if self.cfg.activation_checkpointing:
                checkpoint_activations(unit)
            if self.cfg.compile:
                unit.compile()
        model = self.wrap(model, shard_units)
        return model, make_optimizer(model)

    @abstractmethod
    def wrap(self, model: nn.Module, shard_units: list[nn.Module]) -> nn.Module:
        """Return the module to train (on this rank's device)."""

    @abstractmethod
    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward; ``enabled=False`` on all but the
        last micro-batch of an accumulation window, so gradients are reduced once per step."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.precision == Precision.bf16:
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def apply_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, update: bool) -> tuple[bool, torch.Tensor]:
        """Clip (by value, then by global norm), step the optimizer if ``update`` (every rank
        passes the same) and the gradients are finite, and clear the gradients. Returns whether
        the update was applied and the global gradient norm before clipping."""
        params = [p for p in model.parameters() if p.grad is not None]
        if self.trainer_cfg.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.trainer_cfg.clip_grad_value)
        max_norm = self.trainer_cfg.clip_grad_norm
        norm = self._local(torch.nn.utils.clip_grad_norm_(params, float("inf") if max_norm is None else max_norm))
        applied = update and bool(torch.isfinite(norm))  # the norm is global: the same on every rank
        if applied:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever ``wrap`` returned (to reach its submodules)."""
        return model

    @torch.no_grad()
    def read_full(self, param: torch.Tensor) -> torch.Tensor:
        """A copy of the whole parameter, on every rank (a collective for sharded engines)."""
        return self._local(param).detach().clone()

    @torch.no_grad()
    def write_full(self, param: torch.Tensor, value: torch.Tensor) -> None:
        """Set the whole parameter (and whatever master copy the optimizer steps); every rank
        passes the same ``value``."""
        param.copy_(value)

    def state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Model and optimizer state keyed by the unwrapped module's parameter names (the
        same keys for every engine), as DCP tensors so any engine and world size can load."""
        return get_state_dict(model, optimizer)

    def load_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(strict=True))

    def save_native(self, model: nn.Module, path: Path) -> None:
        """Write the files an engine keeps in its own format into checkpoint directory ``path``
        (collective); DCP engines keep everything in ``state_dict``."""

    def load_native(self, model: nn.Module, path: Path) -> None:
        """Read what ``save_native`` wrote (collective)."""

    @staticmethod
    def _local(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if hasattr(t, "full_tensor") else t
