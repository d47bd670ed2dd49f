"""Token examples: decode a ``KEY.codes.npy`` (int16 ``[n_q, T]``) + ``KEY.json`` sample,
crop or pad to a fixed number of frames, and batch; and the rules for a usable codes member
(``load_codes``)."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch

from aurora.data.members import caption, metadata, require_members
from aurora.data.skips import DECODE_ERROR, EMPTY_CODES, BadSample

_RETOKENIZE = "re-create the token shard with data_prep.tokenize"


def codes_shape(sample: dict, n_q: int | None, member: str = "codes.npy", dtype: type = np.int16,
                rows: str = "n_q", remake: str = _RETOKENIZE) -> tuple[int, int]:
    """``(n_q, T)`` of the sample's codes member from its .npy header, without loading the
    codes: BadSample(missing_member, decode_error) unless the header reads as int16 ``[n_q, T]``
    (``n_q``: the manifest's; None leaves it unchecked) and the member holds exactly the bytes
    that shape needs (a header may claim any shape: np.load would allocate it before reading),
    BadSample(empty_codes) when T is 0. Other arrays of frames (latents) name their ``dtype``,
    what their ``rows`` are and how to ``remake`` a bad one."""
    require_members(sample, member)
    name = f"{sample['__key__']}.{member}"
    stream = io.BytesIO(sample[member])
    try:
        major, _ = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, held = read_header(stream)
    except Exception as exn:  # noqa: BLE001 - numpy parses the header with ast and tokenize, which raise many kinds
        raise _load_error(name, exn, remake) from None
    # The format is int16, what every writer writes: another dtype is refused, not converted,
    # so that a foreign or broken writer shows up.
    want_dtype = np.dtype(dtype)
    if held != want_dtype or len(shape) != 2 or (n_q is not None and shape[0] != n_q):
        want = f"{want_dtype} [{rows}={n_q}, T]" if n_q is not None else f"{want_dtype} [{rows}, T]"
        raise BadSample(DECODE_ERROR, f"{name} is {held} {list(shape)}, not {want}: {remake}")
    data = len(sample[member]) - stream.tell()
    if data != shape[0] * shape[1] * held.itemsize:
        raise BadSample(DECODE_ERROR, f"{name}: its header says {list(shape)}, which takes "
                                      f"{shape[0] * shape[1] * held.itemsize} bytes, and it holds {data}: {remake}")
    if shape[1] == 0:
        raise BadSample(EMPTY_CODES, f"{name} has no frames: drop the sample from the shard")
    return shape


def load_codes(sample: dict, n_q: int | None, codebook_size: int | None, member: str = "codes.npy") -> np.ndarray:
    """The sample's codes, int16 ``[n_q, T]`` with T > 0 (``codes_shape``'s rules) and every code
    in ``[0, codebook_size)`` (the manifest's; None checks only that none is negative);
    BadSample(missing_member, decode_error, empty_codes) otherwise."""
    codes_shape(sample, n_q, member)
    name = f"{sample['__key__']}.{member}"
    try:
        codes = np.load(io.BytesIO(sample[member]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exn:
        raise _load_error(name, exn) from None
    # An out-of-range code would index past the model's embeddings (on a GPU: a device-side assert).
    if codes.min() < 0 or (codebook_size is not None and codes.max() >= codebook_size):
        raise BadSample(DECODE_ERROR, f"{name} holds codes in [{codes.min()}, {codes.max()}], outside "
                                      f"[0, {codebook_size if codebook_size is not None else 'codebook_size'}): "
                                      f"{_RETOKENIZE} with the codec its manifest names")
    return codes


def _load_error(name: str, exn: Exception, remake: str = _RETOKENIZE) -> BadSample:
    return BadSample(DECODE_ERROR, f"{name} does not load ({exn}): {remake}")


class TokenExamples:
    """Turns raw token samples into ``context_frames``-long code examples and batches.

    ``codebook_size`` (from the token manifest; None: unchecked) bounds the codes; ``frame_rate`` (frames per
    second, from the token manifest) lets dynamic batching measure examples in seconds;
    ``pad_to_longest`` pads a batch to its longest example.
    """

    members = ("codes.npy", "json")
    """The members read from each sample."""

    def __init__(self, n_q: int, context_frames: int, frame_rate: float | None = None,
                 pad_to_longest: bool = False, codebook_size: int | None = None):
        self.n_q = n_q
        self.codebook_size = codebook_size
        self.context_frames = context_frames
        self.frame_rate = frame_rate
        self.pad_to_longest = pad_to_longest

    def seconds(self, sample: dict) -> float:
        """The length of the example ``decode`` would make, from the .npy header (the json's
        ``frames`` is checked, not trusted: batches are sized by it), without loading the codes."""
        metadata(sample)
        return min(codes_shape(sample, self.n_q)[1], self.context_frames) / self.frame_rate

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator]) -> dict:
        """A ``{"codes": LongTensor[n_q, T'], "text", "key"}`` example, T' <= context_frames."""
        require_members(sample, "codes.npy", "json")
        text = caption(sample)
        key = sample["__key__"]
        codes = load_codes(sample, self.n_q, self.codebook_size)
        frames = codes.shape[1]
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
