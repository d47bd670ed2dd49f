"""Token examples: decode a ``KEY.codes.npy`` (int16 ``[n_q, T]``) + ``KEY.json`` sample,
crop or pad to a fixed number of frames, and batch."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch

from aurora.data.members import caption, metadata, positive_number, require_members
from aurora.data.skips import DECODE_ERROR, EMPTY_CODES, BadSample


class TokenExamples:
    """Turns raw token samples into ``context_frames``-long code examples and batches.

    ``frame_rate`` (frames per second, from the token manifest) lets dynamic batching measure
    examples in seconds; ``pad_to_longest`` pads a batch to its longest example.
    """

    def __init__(self, n_q: int, context_frames: int, frame_rate: float | None = None,
                 pad_to_longest: bool = False):
        self.n_q = n_q
        self.context_frames = context_frames
        self.frame_rate = frame_rate
        self.pad_to_longest = pad_to_longest

    def seconds(self, sample: dict) -> float:
        """The length of the example ``decode`` would make, from the json's ``frames`` (or the
        .npy header), without loading the codes."""
        frames = positive_number(metadata(sample), "frames")
        if frames is None:
            require_members(sample, "codes.npy")
            try:
                stream = io.BytesIO(sample["codes.npy"])
                major, _ = np.lib.format.read_magic(stream)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                frames = read_header(stream)[0][-1]
            except (ValueError, IndexError) as exn:
                raise BadSample(DECODE_ERROR, f"{sample['__key__']}.codes.npy: {exn}") from None
        return min(frames, self.context_frames) / self.frame_rate

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator]) -> dict:
        """A ``{"codes": LongTensor[n_q, T'], "text", "key"}`` example, T' <= context_frames."""
        require_members(sample, "codes.npy", "json")
        text = caption(sample)
        key = sample["__key__"]
        try:
            codes = np.load(io.BytesIO(sample["codes.npy"]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exn:
            raise BadSample(DECODE_ERROR, f"{key}.codes.npy: {exn}") from None
        if codes.ndim != 2 or codes.shape[0] != self.n_q or not np.issubdtype(codes.dtype, np.integer):
            raise BadSample(DECODE_ERROR, f"{key}.codes.npy is {codes.dtype} {list(codes.shape)}; "
                                          f"expected integer [n_q={self.n_q}, T]")
        frames = codes.shape[1]
        if frames == 0:
            raise BadSample(EMPTY_CODES, f"{key}.codes.npy has no frames")
        if frames > self.context_frames:
            start = int(crop_rng().integers(0, frames - self.context_frames + 1))
            codes = codes[:, start: start + self.context_frames]
        return {"codes": torch.from_numpy(codes.astype(np.int64)), "text": text, "key": key}

    def collate(self, examples: list[dict]) -> dict:
        """``{"codes": [B, n_q, T], "lengths": [B], "text", "keys"}``, zero-padded to T (the
        context, or the longest example)."""
        lengths = torch.tensor([e["codes"].shape[1] for e in examples], dtype=torch.long)
        frames = int(lengths.max()) if self.pad_to_longest else self.context_frames
        codes = torch.zeros(len(examples), self.n_q, frames, dtype=torch.long)
        for i, example in enumerate(examples):
            codes[i, :, : lengths[i]] = example["codes"]
        return {"codes": codes, "lengths": lengths, "text": [e["text"] for e in examples],
                "keys": [e["key"] for e in examples]}
