"""Audio examples: decode a ``KEY.flac`` + ``KEY.json`` sample, crop or pad, and batch; and the
rules for a usable FLAC member (``open_flac``, ``read_frames``, ``check_flac``)."""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from aurora.data.members import caption, metadata, require_members
from aurora.data.skips import DECODE_ERROR, EMPTY_AUDIO, BadSample

CHECK_BLOCK_FRAMES = 1 << 16
"""``check_flac`` decodes this many frames at a time, so a long clip needs little memory."""


def open_flac(sample: dict) -> sf.SoundFile:
    """The sample's ``.flac`` member opened for reading (use it in a ``with``): BadSample
    (missing_member, decode_error) unless its header reads, BadSample(empty_audio) when it
    holds no samples."""
    require_members(sample, "flac")
    try:
        f = sf.SoundFile(io.BytesIO(sample["flac"]))
    except (RuntimeError, ValueError) as exn:
        raise _decode_error(sample["__key__"], exn) from None
    if f.frames == 0:
        f.close()
        raise BadSample(EMPTY_AUDIO, f"{sample['__key__']}.flac has no samples: drop the clip from the shard")
    return f


def read_frames(f: sf.SoundFile, key: str, start: int, count: int) -> np.ndarray:
    """Frames ``[start, start + count)`` of the open FLAC of sample ``key``, float32
    ``[count, channels]``; BadSample(decode_error) unless every one of them decodes."""
    try:
        if f.tell() != start:
            f.seek(start)
        data = f.read(count, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as exn:
        raise _decode_error(key, exn) from None
    if len(data) < count:
        raise BadSample(DECODE_ERROR, f"{key}.flac: {len(data)} of its frames [{start}, {start + count}) decode "
                                      f"(corrupt or cut short): re-encode the clip or drop it")
    return data


def check_flac(sample: dict) -> tuple[int, int, int]:
    """``(frames, sample_rate, channels)`` of the sample's FLAC, once every frame has decoded
    (``open_flac`` and ``read_frames``' rules over the whole clip)."""
    key = sample["__key__"]
    with open_flac(sample) as f:
        for start in range(0, f.frames, CHECK_BLOCK_FRAMES):
            read_frames(f, key, start, min(CHECK_BLOCK_FRAMES, f.frames - start))
        return f.frames, f.samplerate, f.channels


def _decode_error(key: str, exn: Exception) -> BadSample:
    # LibsndfileError's str() names the in-memory file object; its error_string does not.
    return BadSample(DECODE_ERROR, f"{key}.flac does not decode ({getattr(exn, 'error_string', exn)}): "
                                   f"re-encode the clip or drop it")


class AudioExamples:
    """Turns raw audio samples into fixed-length mono examples and batches of them.

    ``segment_seconds=None`` keeps whole clips (for tokenizing); then ``decode`` needs no rng
    and ``collate`` is not used. ``pad_to_longest`` pads a batch to its longest example rather
    than to the segment (dynamic batching).
    """

    def __init__(self, sample_rate: int, segment_seconds: float | None, pad_to_longest: bool = False):
        self.sample_rate = sample_rate
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.pad_to_longest = pad_to_longest

    def seconds(self, sample: dict) -> float:
        """The length of the example ``decode`` would make, from the json's ``duration`` (or the
        FLAC header when it has none), without decoding audio."""
        duration = metadata(sample).get("duration")
        if duration is None:
            with open_flac(sample) as f:
                duration = f.frames / f.samplerate
        return min(duration, self.segment / self.sample_rate)

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator] | None) -> dict:
        """A ``{"audio": FloatTensor[S'], "text", "key"}`` example, S' <= segment."""
        require_members(sample, "flac", "json")
        text = caption(sample)
        key = sample["__key__"]
        with open_flac(sample) as f:
            rate, frames = f.samplerate, f.frames
            # Crop in the source rate, so only the segment is decoded, resampled and checked:
            # damage elsewhere in a clip skips it only in the epochs whose crop meets it (the
            # verifier, tools.inspect_shards, decodes whole clips). Decoding whole clips here
            # would take 15-25x the decoding time for 30 s clips and 1 s crops.
            want = frames if self.segment is None else min(frames, math.ceil(self.segment * rate / self.sample_rate))
            start = int(crop_rng().integers(0, frames - want + 1)) if frames > want else 0
            data = read_frames(f, key, start, want)
        audio = torch.from_numpy(data[:, 0] if data.shape[1] == 1 else data.mean(axis=1))
        if rate != self.sample_rate:
            audio = AF.resample(audio, rate, self.sample_rate)[: self.segment]
        return {"audio": audio, "text": text, "key": key}

    def collate(self, examples: list[dict]) -> dict:
        """``{"audio": [B, 1, S], "lengths": [B], "text", "keys"}``, zero-padded to S (the segment,
        or the longest example)."""
        lengths = torch.tensor([len(e["audio"]) for e in examples], dtype=torch.long)
        audio = torch.zeros(len(examples), 1, int(lengths.max()) if self.pad_to_longest else self.segment)
        for i, example in enumerate(examples):
            audio[i, 0, : lengths[i]] = example["audio"]
        return {"audio": audio, "lengths": lengths, "text": [e["text"] for e in examples],
                "keys": [e["key"] for e in examples]}
