"""Streaming, decoding and batching of shard sets, with resumable state."""

from aurora.data.config import DataConfig, DataError
from aurora.data.stream import ResumableLoader, batch_to_device, build_loader

__all__ = ["DataConfig", "DataError", "ResumableLoader", "batch_to_device", "build_loader"]
