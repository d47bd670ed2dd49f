"""Audio examples: decode a ``KEY.flac`` + ``KEY.json`` sample, crop or pad, and batch; and the
rules for a usable FLAC member (``open_flac``, ``check_resample``, ``read_frames``,
``check_flac``). Every limit that protects memory is checked on the header, before any audio
is decoded: the sample rate and channels, the clip's length, the resample ratio."""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from aurora.data.members import caption, metadata, require_members
from aurora.data.skips import BAD_SAMPLE_RATE, DECODE_ERROR, EMPTY_AUDIO, TOO_LONG, BadSample

CHECK_BLOCK_FRAMES = 1 << 16
"""``check_flac`` decodes this many frames at a time, so a long clip needs little memory."""
MAX_SAMPLE_RATE = 384_000
"""The highest sample rate accepted (Hz): that of the fastest common converters (DXD is 352.8 kHz)."""
MAX_CHANNELS = 8
"""FLAC's own limit: a member with more channels is no FLAC, whatever its name."""
MAX_RESAMPLE_TERMS = 1 << 24
"""Resampling from rate a to rate b, with a/b = p/q in lowest terms, builds a filter of about
p*q floats (torchaudio's polyphase sinc kernel): 64 MB and a fraction of a second at this bound
(44.056 kHz -> 16 kHz is 11 M), 3 GB for 48.001 kHz -> 16 kHz."""


def open_flac(sample: dict, max_seconds: float | None = None) -> sf.SoundFile:
    """The sample's ``.flac`` member opened for reading (use it in a ``with``): BadSample
    (missing_member, decode_error) unless its header reads, BadSample(bad_sample_rate) unless
    its rate is in [1, MAX_SAMPLE_RATE] Hz, BadSample(decode_error) with more than MAX_CHANNELS
    channels, BadSample(empty_audio) when it holds no samples, BadSample(too_long) when it lasts
    more than ``max_seconds`` (None: any length)."""
    require_members(sample, "flac")
    key = sample["__key__"]
    try:
        f = sf.SoundFile(io.BytesIO(sample["flac"]))
    except (RuntimeError, ValueError) as exn:
        raise _decode_error(key, exn) from None
    problem = None
    if not 1 <= f.samplerate <= MAX_SAMPLE_RATE:
        problem = BadSample(BAD_SAMPLE_RATE, f"{key}.flac is at {f.samplerate} Hz, outside [1, {MAX_SAMPLE_RATE}] Hz: "
                                             f"re-encode the clip or drop it")
    elif f.channels > MAX_CHANNELS:
        problem = BadSample(DECODE_ERROR, f"{key}.flac has {f.channels} channels, more than FLAC's {MAX_CHANNELS}: "
                                          f"re-encode the clip or drop it")
    elif f.frames == 0:
        problem = BadSample(EMPTY_AUDIO, f"{key}.flac has no samples: drop the clip from the shard")
    elif max_seconds is not None and f.frames > max_seconds * f.samplerate:
        problem = BadSample(TOO_LONG, f"{key}.flac lasts {f.frames / f.samplerate:.1f} s by its header, more than "
                                      f"data.max_seconds={max_seconds:g}: cut the clip (data_prep.make_shards "
                                      f"--max-seconds) or raise data.max_seconds")
    if problem is not None:
        f.close()
        raise problem
    return f


def check_resample(key: str, rate: int, target: int) -> None:
    """BadSample(bad_sample_rate) unless resampling ``rate`` to ``target`` Hz is cheap enough
    (MAX_RESAMPLE_TERMS)."""
    gcd = math.gcd(rate, target)
    if (rate // gcd) * (target // gcd) > MAX_RESAMPLE_TERMS:
        raise BadSample(BAD_SAMPLE_RATE, f"{key}.flac is at {rate} Hz: resampling it to {target} Hz (a ratio of "
                                         f"{rate // gcd}/{target // gcd}) would need a filter of "
                                         f"{(rate // gcd) * (target // gcd):,} terms, more than {MAX_RESAMPLE_TERMS:,}: "
                                         f"resample the clip offline or drop it")


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


def check_flac(sample: dict, max_seconds: float | None = None) -> tuple[int, int, int]:
    """``(frames, sample_rate, channels)`` of the sample's FLAC, once every frame has decoded
    (``open_flac`` and ``read_frames``' rules over the whole clip)."""
    key = sample["__key__"]
    with open_flac(sample, max_seconds) as f:
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
    than to the segment (dynamic batching). Clips longer than ``max_seconds`` by their header
    are skipped (too_long) before anything is decoded.
    """

    members = ("flac", "json")
    """The members read from each sample."""

    def __init__(self, sample_rate: int, segment_seconds: float | None, pad_to_longest: bool = False,
                 max_seconds: float | None = None):
        self.sample_rate = sample_rate
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.pad_to_longest = pad_to_longest
        self.max_seconds = max_seconds

    def open(self, sample: dict) -> sf.SoundFile:
        """``open_flac`` with this reader's length limit, and ``check_resample`` to its rate."""
        f = open_flac(sample, self.max_seconds)
        try:
            check_resample(sample["__key__"], f.samplerate, self.sample_rate)
        except BadSample:
            f.close()
            raise
        return f

    def seconds(self, sample: dict) -> float:
        """The length of the example ``decode`` would make, from the audio header (the json's
        ``duration`` is checked, not trusted: batches are sized by it), without decoding audio."""
        metadata(sample)
        with self.open(sample) as f:
            duration = f.frames / f.samplerate
        return duration if self.segment is None else min(duration, self.segment / self.sample_rate)

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator] | None) -> dict:
        """A ``{"audio": FloatTensor[S'], "text", "key"}`` example, S' <= segment."""
        require_members(sample, "flac", "json")
        text = caption(sample)
        key = sample["__key__"]
        with self.open(sample) as f:
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
