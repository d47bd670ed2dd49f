"""Token examples: decode a ``KEY.codes.npy`` (int16 ``[n_q, T]``) + ``KEY.json`` sample,
crop or pad to a fixed number of frames, and batch."""

from __future__ import annotations

import io

import numpy as np
import torch

from aurora.data.members import caption, require_members
from aurora.data.skips import DECODE_ERROR, EMPTY_CODES, BadSample


class TokenExamples:
    """Turns raw token samples into ``context_frames``-long code examples and batches."""

    def __init__(self, n_q: int, context_frames: int):
        self.n_q = n_q
        self.context_frames = context_frames

    def decode(self, sample: dict, rng: np.random.Generator) -> dict:
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
            start = int(rng.integers(0, frames - self.context_frames + 1))
            codes = codes[:, start: start + self.context_frames]
        return {"codes": torch.from_numpy(codes.astype(np.int64)), "text": text, "key": key}

    def collate(self, examples: list[dict]) -> dict:
        """``{"codes": [B, n_q, T], "lengths": [B], "text", "keys"}``, zero-padded to T."""
        codes = torch.zeros(len(examples), self.n_q, self.context_frames, dtype=torch.long)
        lengths = torch.tensor([e["codes"].shape[1] for e in examples], dtype=torch.long)
        for i, example in enumerate(examples):
            codes[i, :, : lengths[i]] = example["codes"]
        return {"codes": codes, "lengths": lengths, "text": [e["text"] for e in examples],
                "keys": [e["key"] for e in examples]}
