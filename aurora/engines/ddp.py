"""DistributedDataParallel: the model replicated on every rank, gradients all-reduced in buckets."""

import contextlib

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aurora.engines.base import Engine


class DDPEngine(Engine):
    def wrap(self, model: nn.Module, shard_units: list[nn.Module]) -> nn.Module:
        model = model.to(self.env.device)
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters at construction, so all replicas start equal.
        return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.cfg.bucket_cap_mb)

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if enabled else model.no_sync()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module
