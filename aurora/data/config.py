"""The ``data`` section of a training config, and the error for data that cannot be used."""

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from aurora.ranges import ranged


class DataError(ValueError):
    """A data setting, shard set or loader state that cannot be used; the message says what to do.
    (Missing files raise FileNotFoundError.)"""


@dataclass
class DataConfig:
    shards: str = MISSING
    """Shard set: a directory holding manifest.json (written by data_prep.make_shards), or a
    brace pattern such as ``data/shards/shard-{000000..000099}.tar``."""
    eval_shards: Optional[str] = None
    """Held-out shard set (same forms as ``shards``) for ``trainer.eval_every``; read with the
    same decoding and batching, without shuffling differences between evaluations."""
    backend: str = "native"
    """Reader: ``native`` (aurora's resumable, elastic tar reader) or ``dali`` (NVIDIA DALI's
    ``fn.readers.webdataset`` + ``fn.decoders.audio``; audio shards only, see aurora.data.dali)."""
    batching: str = "fixed"
    """``fixed``: ``batch_size`` examples per micro-batch, each cropped/padded to
    ``segment_seconds``. ``dynamic``: clips of similar length are batched together up to
    ``max_seconds_per_batch`` of padded audio (or tokens' seconds), so the batch size varies."""
    batch_size: int = ranged(8, 1, 65536)
    """Examples per rank per micro-batch (``batching=fixed``)."""
    max_seconds_per_batch: float = 32.0
    """``batching=dynamic``: padded seconds per rank per micro-batch (examples x the longest of
    them). Must be at least the longest example (``segment_seconds``, or ``context_frames``
    at the tokens' frame rate)."""
    bucket_width: float = 0.1
    """``batching=dynamic``: relative width of a duration bucket; clips batched together differ
    in length by at most this fraction, which bounds the padding."""
    dali_device: str = "cpu"
    """``backend=dali``: where decoding runs after the read: ``cpu`` or ``gpu``."""
    dali_mel_bins: int = 0
    """``backend=dali``: when > 0, batches also carry ``mel`` [B, bins, frames], log-mel
    features computed inside the DALI pipeline (on ``dali_device``)."""
    num_workers: int = 1
    """DataLoader worker processes per rank; 0 reads in the training process. Resuming with
    the same value and world size replays the exact sample order; another value or world size
    resumes elastically (the rest of the epoch, re-split: nothing lost, nothing repeated)."""
    shuffle_buffer: int = 100
    """Samples held in each reader's shuffle buffer (0 or 1: shard order only)."""
    sample_rate: int = 16000
    """Audio: target sample rate in Hz; decoded audio at another rate is resampled to it."""
    segment_seconds: float = 1.0
    """Audio: length of the random crop per example (with ``batching=dynamic``: the longest
    example; longer clips are cropped); shorter clips are zero-padded and their valid length is
    kept in ``lengths``."""
    context_frames: int = ranged(256, 1, 2**20)
    """Tokens: codec frames per example (random crop; shorter sequences are zero-padded and
    their valid length is kept in ``lengths``)."""
    max_seconds: float = 600.0
    """Audio: clips that last longer by their header are skipped and counted (``too_long``)
    before anything is decoded: a header may claim any length, and tokenizing decodes whole
    clips into memory."""
    max_member_mb: float = 256.0
    """A sample member (``.flac``, ``.codes.npy``, ...) larger than this many megabytes (10^6
    bytes) is not read: the sample is skipped and counted (``too_large``). Members a recipe does
    not use are never read, whatever their size."""
