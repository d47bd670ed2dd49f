"""The ``data`` section of a training config, and the error for data that cannot be used."""

from dataclasses import dataclass

from omegaconf import MISSING


class DataError(ValueError):
    """A data setting, shard set or loader state that cannot be used; the message says what to do.
    (Missing files raise FileNotFoundError.)"""


@dataclass
class DataConfig:
    shards: str = MISSING
    """Shard set: a directory holding manifest.json (written by data_prep.make_shards), or a
    brace pattern such as ``data/shards/shard-{000000..000099}.tar``."""
    batch_size: int = 8
    """Examples per rank per micro-batch."""
    num_workers: int = 1
    """DataLoader worker processes per rank; 0 reads in the training process. Exact resume
    needs the same value (and world size) as the run that saved the checkpoint."""
    shuffle_buffer: int = 100
    """Samples held in each reader's shuffle buffer (0 or 1: shard order only)."""
    sample_rate: int = 16000
    """Audio: target sample rate in Hz; decoded audio at another rate is resampled to it."""
    segment_seconds: float = 1.0
    """Audio: length of the random crop per example; shorter clips are zero-padded and their
    valid length is kept in ``lengths``."""
    context_frames: int = 256
    """Tokens: codec frames per example (random crop; shorter sequences are zero-padded and
    their valid length is kept in ``lengths``)."""
