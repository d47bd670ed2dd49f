"""Preference-pair examples: the shard format that ``data_prep.make_pairs`` writes, and its batches.

A pair sample holds ``KEY.chosen.npy`` and ``KEY.rejected.npy`` (int16 ``[n_q, T]``, each its own
T) and ``KEY.json``: the caption (``text``), each side's frame count (``chosen_frames``,
``rejected_frames``), the rewards that ranked it and where it came from; once
``data_prep.ref_logprobs`` has run, also the reference model's summed log-probs of both sides
(``ref_chosen_logp``, ``ref_rejected_logp``) and its id (``ref_id``). The manifest (kind
``pairs``) carries the token set's ``n_q``, ``codebook_size``, ``frame_rate`` and codec, the
``policy`` that sampled the pairs and, after ``ref_logprobs``, the ``reference`` (its id).

A pair is used whole or not at all: the log-probs of a crop would not be the precomputed ones,
so a side longer than ``data.context_frames`` is skipped and counted (``long_pair``), as is a
pair whose two sides are the same codes (``identical_pair``: its loss has no gradient).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch

from aurora.data.members import is_finite_number, metadata, require_members
from aurora.data.skips import BAD_JSON, IDENTICAL_PAIR, LONG_PAIR, BadSample
from aurora.data.tokens import codes_shape, load_codes

CHOSEN, REJECTED = "chosen", "rejected"
SIDES = (CHOSEN, REJECTED)
REF_ID = "ref_id"
"""json field: the id of the reference model whose log-probs the sample holds."""


def member(side: str) -> str:
    """The tar member of one side's codes: ``chosen.npy`` or ``rejected.npy``."""
    return f"{side}.npy"


def frames_field(side: str) -> str:
    return f"{side}_frames"


def ref_field(side: str) -> str:
    """json field of the reference's summed log-prob of one side."""
    return f"ref_{side}_logp"


class PairExamples:
    """Turns raw pair samples into examples and batches.

    ``reference`` is the id of the reference whose log-probs the shard set holds (the manifest's
    ``reference.id``; None: the shards hold none, and none are read). Each sample must then hold
    both log-probs under that id, or it is skipped (``bad_json``): a sample without them would
    train on a zero reference."""

    def __init__(self, n_q: int, context_frames: int, frame_rate: float | None = None,
                 pad_to_longest: bool = False, codebook_size: int | None = None, reference: str | None = None):
        self.n_q = n_q
        self.context_frames = context_frames
        self.frame_rate = frame_rate
        self.pad_to_longest = pad_to_longest
        self.codebook_size = codebook_size
        self.reference = reference

    members = (*(member(side) for side in SIDES), "json")
    """The members read from each sample."""

    def seconds(self, sample: dict) -> float:
        """The length of the pair's longer side, from the .npy headers (the json's frame counts
        are checked, not trusted: batches are sized by them)."""
        meta = metadata(sample)
        frames = [meta.get(frames_field(side)) for side in SIDES]
        if not all(isinstance(f, int) and f > 0 for f in frames):
            raise BadSample(BAD_JSON, f"{sample['__key__']}.json lacks positive integer chosen_frames and "
                                      f"rejected_frames: re-create the pairs with data_prep.make_pairs")
        return max(codes_shape(sample, self.n_q, member(side))[1] for side in SIDES) / self.frame_rate

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator] | None = None) -> dict:
        """``{"chosen", "rejected": LongTensor[n_q, T_side], "text", "key", "ref": (c, r) | None}``."""
        require_members(sample, *(member(side) for side in SIDES), "json")
        meta = metadata(sample)
        key = sample["__key__"]
        codes = {side: load_codes(sample, self.n_q, self.codebook_size, member(side)) for side in SIDES}
        longest = max(c.shape[1] for c in codes.values())
        if longest > self.context_frames:
            raise BadSample(LONG_PAIR, f"{key} has a side of {longest} frames, more than data.context_frames="
                                       f"{self.context_frames}: raise data.context_frames (pairs are never cropped)")
        if codes[CHOSEN].shape == codes[REJECTED].shape and np.array_equal(codes[CHOSEN], codes[REJECTED]):
            raise BadSample(IDENTICAL_PAIR, f"{key}: chosen and rejected are the same codes, which teach nothing")
        ref = None
        if self.reference is not None:
            values = [meta.get(ref_field(side)) for side in SIDES]
            if meta.get(REF_ID) != self.reference or not all(is_finite_number(v) for v in values):
                raise BadSample(BAD_JSON, f"{key}.json holds no finite reference log-probs of reference "
                                          f"{self.reference} (its ref_id: {meta.get(REF_ID)!r}): run "
                                          f"data_prep.ref_logprobs on the pair set again")
            ref = tuple(float(v) for v in values)
        text = meta.get("text", "")
        return {**{side: torch.from_numpy(c.astype(np.int64)) for side, c in codes.items()},
                "text": text, "key": key, "ref": ref}

    def collate(self, examples: list[dict]) -> dict:
        """``{"codes": [2B, n_q, T], "lengths": [2B], "text": [B], "keys": [B]}``: the B chosen
        sides then the B rejected ones, zero-padded to T (the context, or the longest side); with
        reference log-probs also ``ref_logps`` [2B] (float32, in the same order)."""
        sides = [e[side] for side in SIDES for e in examples]
        lengths = torch.tensor([c.shape[1] for c in sides], dtype=torch.long)
        frames = int(lengths.max()) if self.pad_to_longest else self.context_frames
        codes = torch.zeros(len(sides), self.n_q, frames, dtype=torch.long)
        for i, c in enumerate(sides):
            codes[i, :, : c.shape[1]] = c
        batch = {"codes": codes, "lengths": lengths, "text": [e["text"] for e in examples],
                 "keys": [e["key"] for e in examples]}
        if self.reference is not None:
            batch["ref_logps"] = torch.tensor([e["ref"][j] for j in range(2) for e in examples], dtype=torch.float32)
        return batch


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (what a tar member holds)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
