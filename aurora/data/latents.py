"""Latent examples: decode a ``KEY.latents.npy`` (float16 ``[latent_dim, T]``, a codec encoder's
output before quantization, written by ``data_prep.tokenize --latents``) + ``KEY.json`` sample,
crop or pad to a fixed number of frames, and batch."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch

from aurora.data.members import caption, metadata, require_members
from aurora.data.skips import DECODE_ERROR, BadSample
from aurora.data.tokens import codes_shape

MEMBER = "latents.npy"
REMAKE = "re-create the latent shard with data_prep.tokenize --latents"


def latents_shape(sample: dict, latent_dim: int | None) -> tuple[int, int]:
    """``(latent_dim, T)`` from the member's .npy header, checked as ``codes_shape`` checks codes."""
    return codes_shape(sample, latent_dim, MEMBER, np.float16, "latent_dim", REMAKE)


def load_latents(sample: dict, latent_dim: int | None) -> np.ndarray:
    """The sample's latents, float16 ``[latent_dim, T]``, T > 0, every value finite; BadSample otherwise."""
    latents_shape(sample, latent_dim)
    name = f"{sample['__key__']}.{MEMBER}"
    try:
        latents = np.load(io.BytesIO(sample[MEMBER]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exn:
        raise BadSample(DECODE_ERROR, f"{name} does not load ({exn}): {REMAKE}") from None
    if not np.isfinite(latents).all():  # an fp16 overflow in the encoder: it would poison every step it is in
        raise BadSample(DECODE_ERROR, f"{name} holds non-finite values: {REMAKE} (in fp32: --precision fp32)")
    return latents


class LatentExamples:
    """Turns raw latent samples into ``context_frames``-long examples and batches, as
    ``TokenExamples`` does codes. ``frame_rate`` (from the manifest) lets dynamic batching
    measure examples in seconds; ``pad_to_longest`` pads a batch to its longest example."""

    members = (MEMBER, "json")
    """The members read from each sample."""

    def __init__(self, latent_dim: int, context_frames: int, frame_rate: float | None = None,
                 pad_to_longest: bool = False):
        self.latent_dim = latent_dim
        self.context_frames = context_frames
        self.frame_rate = frame_rate
        self.pad_to_longest = pad_to_longest

    def seconds(self, sample: dict) -> float:
        metadata(sample)
        return min(latents_shape(sample, self.latent_dim)[1], self.context_frames) / self.frame_rate

    def decode(self, sample: dict, crop_rng: Callable[[], np.random.Generator]) -> dict:
        """A ``{"latents": FloatTensor[latent_dim, T'], "text", "key"}`` example, T' <= context_frames."""
        require_members(sample, MEMBER, "json")
        text = caption(sample)
        latents = load_latents(sample, self.latent_dim)
        frames = latents.shape[1]
        if frames > self.context_frames:
            start = int(crop_rng().integers(0, frames - self.context_frames + 1))
            latents = latents[:, start: start + self.context_frames]
        return {"latents": torch.from_numpy(latents.astype(np.float32)), "text": text, "key": sample["__key__"]}

    def collate(self, examples: list[dict]) -> dict:
        """``{"latents": [B, latent_dim, T], "lengths": [B], "text", "keys"}``, zero-padded to T
        (the context, or the longest example)."""
        lengths = torch.tensor([e["latents"].shape[1] for e in examples], dtype=torch.long)
        frames = int(lengths.max()) if self.pad_to_longest else self.context_frames
        latents = torch.zeros(len(examples), self.latent_dim, frames)
        for i, example in enumerate(examples):
            latents[i, :, : lengths[i]] = example["latents"]
        return {"latents": latents, "lengths": lengths, "text": [e["text"] for e in examples],
                "keys": [e["key"] for e in examples]}
