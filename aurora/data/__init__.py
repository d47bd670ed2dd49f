"""Streaming, decoding and batching of shard sets, with resumable state."""

from aurora.data.config import DataConfig, DataError
from aurora.data.stream import ResumableLoader, build_loader

__all__ = ["DataConfig", "DataError", "ResumableLoader", "build_loader"]
