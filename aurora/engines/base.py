"""The one interface the training loop uses, whatever parallelism wraps the model."""

import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
import torch._dynamo
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.tensor import DTensor

from aurora.config.schema import EngineConfig, Precision, SyncMode, TrainConfig
from aurora.distributed import DistEnv
from aurora.distributed.mesh import node_mesh
from aurora.engines.capabilities import Capabilities
from aurora.precision import bf16_autocast

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]

UNIT_STATES = 4
"""Graphs dynamo may need per unit: trained; frozen while another part steps (its parameters
without gradients); under no_grad (evaluation); and one more when a size first changes."""


def compile_units(units: list[nn.Module], backend: str, dynamic_shapes: bool) -> None:
    """``torch.compile`` each unit in place. Units of one class share one forward, hence one of
    dynamo's caches, but differ in sizes and settings (a period, an FFT size, a width): each
    needs graphs of its own, so the cache limit grows to hold ``UNIT_STATES`` per unit rather
    than fall back to eager, silently, past dynamo's default of 8."""
    largest_class = max(Counter(type(unit) for unit in units).values(), default=0)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, UNIT_STATES * largest_class)
    for unit in units:
        # dynamic=None (fixed batches): sizes stay static until one changes (a short last batch).
        unit.compile(backend=backend, dynamic=True if dynamic_shapes else None)


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
        self.dynamic_shapes = cfg.data.batching == "dynamic"
        """Batches vary in size and length (``data.batching=dynamic``): compiled blocks are traced
        once, with symbolic batch and time sizes, not for the first batch's shape and again when
        another shape arrives."""
        self.hierarchical = cfg.sync.mode == SyncMode.hierarchical
        self.mesh = node_mesh(env) if self.hierarchical or self.cfg.fsdp.hsdp else None
        """The (replicate, shard) mesh of nodes, when the engine syncs by node."""

    def prepare(self, model: nn.Module, shard_units: list[nn.Module],
                make_optimizer: OptimizerFactory | None) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """The module to run and its optimizer. ``shard_units`` are the blocks a sharding
        engine wraps one by one (transformer layers, codec stages); activation checkpointing and
        compilation apply per block, in place, so parameter names stay the model's own.

        ``make_optimizer=None`` prepares a frozen part (a teacher, a reference, an EMA target):
        no optimizer (None is returned), no gradients, in eval mode, and sharded as a trained
        part is (never a whole copy per rank on a sharding engine)."""
        for unit in shard_units:
            if self.cfg.activation_checkpointing:
                checkpoint_activations(unit)
        if self.cfg.compile:
            compile_units(shard_units, self.cfg.compile_backend, self.dynamic_shapes)
        if make_optimizer is None:
            return self.wrap(model.requires_grad_(False).eval(), shard_units, frozen=True), None
        model = self.wrap(model, shard_units, frozen=False)
        return model, make_optimizer(model)

    @abstractmethod
    def wrap(self, model: nn.Module, shard_units: list[nn.Module], frozen: bool) -> nn.Module:
        """Return the module to run (on this rank's device); ``frozen``: a part without
        gradients, which needs no gradient reduction."""

    @abstractmethod
    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward; ``enabled=False`` on all but the
        last micro-batch of an accumulation window, so gradients are reduced once per step."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return bf16_autocast(self.env.device.type, enabled=self.cfg.precision == Precision.bf16)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def zero_grad(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Drop every gradient of ``model`` (also one another part's backward left on it)."""
        optimizer.zero_grad(set_to_none=True)

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
        self.zero_grad(model, optimizer)
        return applied, norm

    def release(self, model: nn.Module) -> None:
        """At the end of a step, once every part is done: free what another part's backward
        through this one left gathered (its shards stay). Nothing on engines whose hooks free
        it themselves."""

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

    @torch.no_grad()
    def local_shards(self, model: nn.Module) -> list[torch.Tensor]:
        """The elements of each parameter of ``model`` that this rank holds, in parameter order,
        as tensors to update in place without a collective between steps (an EMA): the whole
        parameter on a replicating engine, the local shard of an FSDP2 DTensor. Two models of the
        same shapes, prepared by engines of the same settings, hold the same elements of each
        parameter."""
        return [p.to_local() if isinstance(p, DTensor) else p for p in self.unwrap(model).parameters()]

    def state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
        """Model and optimizer state keyed by the unwrapped module's parameter names (the
        same keys for every engine), as DCP tensors so any engine and world size can load. A
        frozen part (``optimizer=None``) has model state only."""
        if optimizer is None:
            return get_model_state_dict(model), {}
        return get_state_dict(model, optimizer)

    def load_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict,
                        optim_state: dict) -> None:
        options = StateDictOptions(strict=True)
        if optimizer is None:
            set_model_state_dict(model, model_state, options=options)
            return
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options)

    def save_native(self, model: nn.Module, folder: Path) -> None:
        """Write the files an engine keeps in its own format for ``model`` into ``folder``
        (``aurora.runs.engine_files_dir``: one per part of a checkpoint; collective); DCP engines
        keep everything in ``state_dict``."""

    def load_native(self, model: nn.Module, folder: Path) -> None:
        """Read what ``save_native`` wrote into ``folder`` (collective)."""

    @staticmethod
    def _local(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if hasattr(t, "full_tensor") else t
