"""FSDP2: ``fully_shard`` on each block, then on the root; parameters are DTensors sharded
over the data-parallel mesh, gathered per block for compute.

Meshes: the whole world (default); ``(replicate, shard)`` with shard = one node for HSDP
(``engine.fsdp.hsdp``); one node alone under ``sync.mode=hierarchical``, whose cross-node exchange
is the periodic parameter average instead. A frozen part is sharded on the same mesh, its
parameters without gradients (so never reduce-scattered) and resharded after every forward: no
backward comes to free them.

bf16: FSDP2's ``MixedPrecisionPolicy`` gathers parameters in bf16 and reduces gradients in fp32,
and the micro-batch runs under the same autocast as on the other engines (``Engine.autocast``):
a module that computes in fp32 inside a unit (the discriminators' STFT, the mel filterbank)
hands fp32 activations to bf16 weights, which autocast casts and a bare convolution refuses."""

import contextlib

import torch
from torch import nn
from torch.distributed.tensor import distribute_tensor
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from aurora.config.schema import EngineConfig, Precision
from aurora.distributed.mesh import SHARD, flat_mesh
from aurora.engines.base import Engine
from aurora.engines.capabilities import Capabilities


class FSDPEngine(Engine):
    shards_parameters = True

    @classmethod
    def capabilities(cls, cfg: EngineConfig) -> Capabilities:
        # HSDP already replicates across nodes every step: no room for the loop's own cross-node sync.
        return Capabilities(hierarchical_sync=not cfg.fsdp.hsdp)

    def wrap(self, model: nn.Module, shard_units: list[nn.Module], frozen: bool) -> nn.Module:
        if self.cfg.fsdp.hsdp:
            mesh = self.mesh
        elif self.hierarchical:
            mesh = self.mesh[SHARD]
        else:
            mesh = flat_mesh(self.env)
        model = model.to(self.env.device)
        mp = MixedPrecisionPolicy()
        if self.cfg.precision == Precision.bf16:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for unit in shard_units:
            fully_shard(unit, mesh=mesh, reshard_after_forward=frozen or self.cfg.fsdp.reshard_after_forward,
                        mp_policy=mp)
        # A trained root keeps its parameters gathered after forward: backward needs them at once.
        fully_shard(model, mesh=mesh, reshard_after_forward=frozen, mp_policy=mp)
        depth = self.cfg.fsdp.prefetch
        if depth:
            for i, unit in enumerate(shard_units):
                unit.set_modules_to_forward_prefetch(shard_units[i + 1:i + 1 + depth])
                unit.set_modules_to_backward_prefetch(shard_units[max(0, i - depth):i][::-1])
        return model

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    @torch.no_grad()
    def write_full(self, param: torch.Tensor, value: torch.Tensor) -> None:
        param.copy_(distribute_tensor(value, param.device_mesh, param.placements))
