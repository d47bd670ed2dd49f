"""DistributedDataParallel: the model replicated on every rank, gradients all-reduced in buckets
of ``engine.ddp.bucket_cap_mb`` MiB, overlapped with backward. Under ``sync.mode=hierarchical`` the
all-reduce spans the ranks of one node only. A frozen part is a plain replica on each rank: it has
no gradients to reduce."""

import contextlib

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aurora.distributed.mesh import SHARD
from aurora.engines.base import Engine


class DDPEngine(Engine):
    def wrap(self, model: nn.Module, shard_units: list[nn.Module], frozen: bool) -> nn.Module:
        model = model.to(self.env.device)
        if frozen:
            return model
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        group = self.mesh.get_group(SHARD) if self.hierarchical else None
        # DDP broadcasts the group's first rank's parameters at construction; the seed already
        # made them equal on every rank, which hierarchical sync relies on across nodes.
        return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.cfg.ddp.bucket_cap_mb,
                                       process_group=group)

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if enabled else model.no_sync()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model
