"""Audio examples: decode a ``KEY.flac`` + ``KEY.json`` sample, crop or pad, and batch."""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from aurora.data.members import caption, metadata, positive_number, require_members
from aurora.data.skips import DECODE_ERROR, EMPTY_AUDIO, BadSample


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
        duration = positive_number(metadata(sample), "duration")
        if duration is None:
            require_members(sample, "flac")
            try:
                duration = sf.info(io.BytesIO(sample["flac"])).duration
            except (RuntimeError, ValueError) as exn:
                raise BadSample(DECODE_ERROR, f"{sample['__key__']}.flac: {getattr(exn, 'error_string', exn)}") from None
        return min(duration, self.segment / self.sample_rate)

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator] | None) -> dict:
        """A ``{"audio": FloatTensor[S'], "text", "key"}`` example, S' <= segment."""
        require_members(sample, "flac", "json")
        text = caption(sample)
        key = sample["__key__"]
        try:
            with sf.SoundFile(io.BytesIO(sample["flac"])) as f:
                rate, frames = f.samplerate, f.frames
                # Crop in the source rate, so only the segment is decoded and resampled.
                want = frames if self.segment is None else min(frames, math.ceil(self.segment * rate / self.sample_rate))
                if frames > want:
                    f.seek(int(crop_rng().integers(0, frames - want + 1)))
                data = f.read(want, dtype="float32", always_2d=False)
        except (RuntimeError, ValueError) as exn:
            # LibsndfileError's str() names the in-memory file object; its error_string does not.
            raise BadSample(DECODE_ERROR, f"{key}.flac: {getattr(exn, 'error_string', exn)}") from None
        if frames == 0:
            raise BadSample(EMPTY_AUDIO, f"{key}.flac has no samples")
        if len(data) < want:
            raise BadSample(DECODE_ERROR, f"{key}.flac: decoded {len(data)} of {want} frames (corrupt?)")
        audio = torch.from_numpy(data if data.ndim == 1 else data.mean(axis=1))
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
