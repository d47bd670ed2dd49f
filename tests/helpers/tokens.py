"""A random tiny codec to tokenize with, and readers of the token shards it makes."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora.data.audio import AudioExamples
from aurora.data.manifest import read_manifest
from aurora.data.tars import read_shard
from aurora.models.codec import Codec, CodecConfig
from aurora.tasks.codec import export_codec

TINY = dict(channels=8, strides=[2, 4, 5, 8], latent_dim=16, n_q=4, codebook_size=64)
BATCH = ["--batch-seconds", "4", "--bucket-width", "1"]  # 0.6-1.2 s clips: several lengths per batch


def make_codec(path: Path, **overrides) -> Path:
    """A random tiny codec, exported. Its conv biases are random too (a fresh codec's are zero),
    as in a trained codec: padding then visibly changes the last frames of an unmasked batch."""
    torch.manual_seed(0)
    codec = Codec(CodecConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for module in codec.modules():
            if isinstance(module, torch.nn.Conv1d) and module.bias is not None:
                module.bias.normal_(0.0, 0.1)
    export_codec(codec, path)
    return path


def token_samples(tar: Path) -> dict[str, tuple[np.ndarray, dict]]:
    out = {}
    for sample in read_shard(str(tar), lambda *a: pytest.fail(f"unreadable token shard {tar}: {a}")):
        out[sample["__key__"]] = (np.load(io.BytesIO(sample["codes.npy"])), json.loads(sample["json"]))
    return out


def source_clips(shards: Path) -> dict[str, torch.Tensor]:
    examples = AudioExamples(16000, segment_seconds=None)
    clips = {}
    for shard in read_manifest(shards)["shards"]:
        for sample in read_shard(str(shards / shard["name"]), lambda *a: pytest.fail(str(a))):
            example = examples.decode(sample, crop_rng=None)
            clips[example["key"]] = example["audio"]
    return clips


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
