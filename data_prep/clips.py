"""One corpus entry to shard samples: decode, take the span, channel policy, cut, resample, encode.

``load_entry(entry, options)`` is a pure function of its arguments and the file's bytes, so
worker processes can run it in any number and the shards stay the same. It returns the
entry's samples (``{"__key__", "flac": bytes, "json": dict}``) and its skip records
(``{"reason", "error", "path", ...}``); it never raises for bad input.

Each sample's json holds ``text``, ``duration`` and ``sample_rate`` (of the stored audio),
``channels``, ``source``, ``corpus``, ``path`` (as listed), ``speaker``/``language`` and the
listing's other fields when known; a piece of a longer recording adds ``segment`` (its number
in the recording), ``start`` and ``end`` (seconds in the source file), and so does an entry
that names a span. A recording longer than ``max_seconds`` is cut (``data_prep.segment``) or
dropped (``too_long="drop"``); pieces shorter than ``min_seconds`` are dropped as ``too_short``.
The text of a cut recording is kept on each of its pieces.

FLAC sources that need no change (same rate and channel count, whole file) are stored byte for
byte; everything else is encoded as 16-bit FLAC, or 24-bit for high-resolution sources.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from data_prep import segment

HIGH_RES_SUBTYPES = {"PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
"""Source subtypes re-encoded as 24-bit FLAC; everything else becomes 16-bit."""

# Skip reasons (besides layouts.BAD_ENTRY and layouts.MISSING_TEXT, found while listing).
MISSING_FILE = "missing_file"
DECODE_ERROR = "decode_error"
EMPTY_AUDIO = "empty_audio"
BAD_SPAN = "bad_span"
"""A ``start``/``end`` span that lies outside the file."""
CHANNELS = "channels"
"""More than two channels where ``--channels 2`` keeps stereo."""
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
LONG_TEXT = "long_text"
"""A caption or transcript longer than ``--max-text-bytes`` (UTF-8)."""
ERROR = "error"
"""Anything unexpected while processing the entry (a bug): the entry is skipped, the job goes on."""
WORKER_CRASH = "worker_crash"
"""The worker process died on this entry twice (a crash in a decoder, the out-of-memory killer)."""


@dataclass(frozen=True)
class ClipOptions:
    sample_rate: int | None
    """Resample to this rate (Hz); None keeps each source's rate."""
    channels: int
    """1: average all channels to mono; 2: keep stereo, mono duplicated to two channels."""
    min_seconds: float
    max_seconds: float
    too_long: str = "cut"
    """"cut": cut longer recordings into pieces; "drop": skip them as too_long."""
    corpus: str = ""
    """Corpus name: ``corpus`` of every sample, ``source`` of those whose listing names none."""
    max_text_bytes: int | None = None
    """Skip clips whose text is longer, in UTF-8 bytes, as long_text; None keeps any length."""


def encode_flac(audio: np.ndarray, sample_rate: int, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype=subtype)
    return buffer.getvalue()


def load_entry(entry: dict, options: ClipOptions) -> tuple[list[dict], list[dict]]:
    """The samples and skip records of one entry (see the module doc)."""
    if "reason" in entry:  # unusable since listing
        return [], [_skip(entry, entry["reason"], entry["error"])]
    try:
        return _load(entry, options)
    except _Skip as skip:
        return [], [_skip(entry, skip.reason, skip.error)]
    except Exception as exn:  # noqa: BLE001 - one bad entry must not stop a long job
        return [], [_skip(entry, ERROR, f"{entry['path']}: {type(exn).__name__}: {exn}")]


def worker_died(entry: dict) -> tuple[list[dict], list[dict]]:
    """What ``load_entry`` would return for an entry whose worker process died on it."""
    return [], [_skip(entry, WORKER_CRASH, f"{entry.get('audio', entry.get('path'))}: the worker process died on "
                                           f"this file, twice (a crash in the decoder, or out of memory)")]


class _Skip(Exception):
    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason, self.error = reason, error


def _skip(entry: dict, reason: str, error: str, **more) -> dict:
    record = {} if entry.get("line") is None else {"line": entry["line"]}
    record.update(path=entry.get("path"), reason=reason, error=error, **more)
    return record


def _load(entry: dict, options: ClipOptions) -> tuple[list[dict], list[dict]]:
    path = entry["audio"]
    text_bytes = len(entry["meta"].get("text", "").encode("utf-8"))
    if options.max_text_bytes is not None and text_bytes > options.max_text_bytes:
        raise _Skip(LONG_TEXT, f"{path}: its text is {text_bytes} bytes, longer than --max-text-bytes "
                               f"{options.max_text_bytes}")
    if not os.path.isfile(path):
        raise _Skip(MISSING_FILE, f"{path}: file not found")
    with _decoding(path):
        f = sf.SoundFile(path)
    with f:
        rate, frames = f.samplerate, f.frames
        if frames == 0:
            raise _Skip(EMPTY_AUDIO, f"{path}: no audio samples")
        if options.channels == 2 and f.channels > 2:
            raise _Skip(CHANNELS, f"{path}: has {f.channels} channels; --channels 2 keeps stereo only "
                                  f"(--channels 1 downmixes any number)")
        span_start = round((entry["start"] or 0.0) * rate)
        span_end = frames if entry["end"] is None else min(round(entry["end"] * rate), frames)
        if span_start >= frames or span_end <= span_start:
            raise _Skip(BAD_SPAN, f"{path}: span {entry['start']}-{entry['end']} s is outside the file "
                                  f"({frames / rate:.3f} s)")
        if span_start:
            with _decoding(path):
                f.seek(span_start)
        left = span_end - span_start

        def read(n: int) -> np.ndarray:
            nonlocal left
            with _decoding(path):
                data = f.read(min(n, left), dtype="float32", always_2d=True)
            left -= len(data)
            return data

        max_frames = math.floor(options.max_seconds * rate)
        if options.too_long == "drop":
            pieces = [(0, read(max_frames + 1))]
            if len(pieces[0][1]) > max_frames:
                raise _Skip(TOO_LONG, f"{path}: {(span_end - span_start) / rate:.3f} s is longer than "
                                      f"--max-seconds {options.max_seconds}")
        else:
            pieces = segment.split(read, rate, max_frames, math.ceil(options.min_seconds * rate))
        samples, skips = [], []
        for number, (offset, audio), last in _mark_last(pieces):
            cut = not (number == 0 and last)
            where = {}
            if cut:
                where = {"segment": number, "start": round((span_start + offset) / rate, 6),
                         "end": round((span_start + offset + len(audio)) / rate, 6)}
            elif entry["start"] is not None or entry["end"] is not None:
                where = {"start": round(span_start / rate, 6), "end": round((span_start + len(audio)) / rate, 6)}
            seconds = len(audio) / rate
            if len(audio) == 0:
                skips.append(_skip(entry, EMPTY_AUDIO, f"{path}: no audio samples"))
            elif seconds < options.min_seconds:
                skips.append(_skip(entry, TOO_SHORT, f"{path}: {'piece' if cut else 'clip'} of {seconds:.3f} s is "
                                   f"shorter than --min-seconds {options.min_seconds}", **where))
            else:
                whole_file = not cut and span_start == 0 and len(audio) == frames
                samples.append(_sample(entry, options, audio, rate, f.format, f.subtype, where, whole_file))
    if not samples and not skips:
        raise _Skip(EMPTY_AUDIO, f"{path}: no audio samples")
    return samples, skips


class _decoding:
    """Turns libsndfile's errors into a decode_error skip."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exn, tb):
        if isinstance(exn, (RuntimeError, ValueError, TypeError, OSError, EOFError)):
            detail = getattr(exn, "error_string", None) or exn
            raise _Skip(DECODE_ERROR, f"{self.path}: cannot decode audio: {detail}") from None
        return False


def _mark_last(pieces):
    """``(number, piece, is_last)`` for each piece, reading one piece ahead."""
    pieces = iter(pieces)
    previous = next(pieces, None)
    number = 0
    while previous is not None:
        current = next(pieces, None)
        yield number, previous, current is None
        previous, number = current, number + 1


def _sample(entry: dict, options: ClipOptions, audio: np.ndarray, rate: int, source_format: str,
            source_subtype: str, where: dict, whole_file: bool) -> dict:
    source_channels = audio.shape[1]
    if options.channels == 1 and source_channels > 1:
        audio = audio.mean(axis=1, keepdims=True)
    elif options.channels == 2 and source_channels == 1:
        audio = np.repeat(audio, 2, axis=1)
    out_rate = options.sample_rate or rate
    if whole_file and source_format == "FLAC" and out_rate == rate and source_channels == options.channels:
        with open(entry["audio"], "rb") as f:
            flac = f.read()
    else:
        if out_rate != rate:
            audio = AF.resample(torch.from_numpy(np.ascontiguousarray(audio.T)), rate, out_rate).T.numpy()
        flac = encode_flac(audio, out_rate, "PCM_24" if source_subtype in HIGH_RES_SUBTYPES else "PCM_16")
    listed = entry["meta"]
    meta = {"text": listed.get("text", ""), "duration": len(audio) / out_rate, "sample_rate": out_rate,
            "channels": options.channels, "source": listed.get("source", options.corpus), "corpus": options.corpus,
            "path": entry["path"]}
    meta.update((k, v) for k, v in listed.items() if k not in meta)
    meta.update(where)
    key = entry["key"] if "segment" not in where else f"{entry['key']}_seg{where['segment']:03d}"
    return {"__key__": key, "flac": flac, "json": meta}
