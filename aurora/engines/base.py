"""The one interface the training loop uses, whatever parallelism wraps the model."""

import contextlib
from abc import ABC, abstractmethod
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from aurora.config.schema import EngineConfig, Precision
from aurora.dist import DistEnv


class Engine(ABC):
    def __init__(self, cfg: EngineConfig, env: DistEnv):
        self.cfg = cfg
        self.env = env

    @abstractmethod
    def wrap(self, model: nn.Module, shard_units: list[nn.Module]) -> nn.Module:
        """Return the module to train. ``shard_units`` are the blocks a sharding engine wraps
        one by one (transformer layers, codec stages)."""

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

    def clip_gradients(self, model: nn.Module, max_value: float | None, max_norm: float | None) -> torch.Tensor:
        """Clip by value, then by global norm; return the global norm before norm clipping."""
        params = [p for p in model.parameters() if p.grad is not None]
        if max_value is not None:
            torch.nn.utils.clip_grad_value_(params, max_value)
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf") if max_norm is None else max_norm)
        return self._local(norm)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The user's module inside whatever ``wrap`` returned (to reach its submodules)."""
        return model

    @torch.no_grad()
    def read_full(self, param: torch.Tensor) -> torch.Tensor:
        """A copy of the whole parameter, on every rank (a collective for sharded engines)."""
        return self._local(param).detach().clone()

    @torch.no_grad()
    def write_full(self, param: torch.Tensor, value: torch.Tensor) -> None:
        """Set the whole parameter; every rank passes the same ``value``."""
        param.copy_(value)

    def state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """Model and optimizer state keyed by the unwrapped module's parameter names (the
        same keys for every engine), as DCP tensors so any engine and world size can load."""
        return get_state_dict(model, optimizer)

    def load_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(strict=True))

    @staticmethod
    def _local(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if hasattr(t, "full_tensor") else t
