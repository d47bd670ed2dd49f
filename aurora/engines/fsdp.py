"""FSDP2: ``fully_shard`` on each block, then on the root; parameters are DTensors sharded
over the data-parallel mesh, gathered per block for compute."""

import contextlib

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from aurora.config.schema import Precision
from aurora.engines.base import Engine


class FSDPEngine(Engine):
    def wrap(self, model: nn.Module, shard_units: list[nn.Module]) -> nn.Module:
        mesh = init_device_mesh(self.env.device.type, (self.env.world_size,), mesh_dim_names=("shard",))
        model = model.to(self.env.device)
        mp = MixedPrecisionPolicy()
        if self.cfg.precision == Precision.bf16:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for unit in shard_units:
            fully_shard(unit, mesh=mesh, reshard_after_forward=self.cfg.reshard_after_forward, mp_policy=mp)
        # The root keeps its parameters gathered after forward: backward needs them at once.
        fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=mp)
        return model

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager:
        # FSDP2 casts parameters through its MixedPrecisionPolicy; autocast on top would
        # only add casts.
        return contextlib.nullcontext()

    @torch.no_grad()
    def write_full(self, param: torch.Tensor, value: torch.Tensor) -> None:
        param.copy_(distribute_tensor(value, param.device_mesh, param.placements))
