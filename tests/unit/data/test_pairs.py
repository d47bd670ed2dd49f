"""Pair shards through the loader: the batch layout DPO trains on, and every bad pair skipped and
counted by its reason."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from aurora.data import DataConfig, build_loader
from aurora.data.manifest import write_manifest
from aurora.data.pairs import npy_bytes
from aurora.data.skips import BAD_JSON, IDENTICAL_PAIR, LONG_PAIR, MISSING_MEMBER

N_Q, CODEBOOK = 2, 16
REF = "lm:test"


def codes(frames: int, offset: int) -> np.ndarray:
    return ((np.arange(N_Q * frames).reshape(N_Q, frames) + offset) % CODEBOOK).astype(np.int16)


def pair(key: str, chosen: int, rejected: int, ref: tuple | None = (-1.5, -2.5), **changes) -> dict:
    meta = {"text": f"caption {key}", "chosen_frames": chosen, "rejected_frames": rejected}
    if ref is not None:
        meta.update(ref_chosen_logp=ref[0], ref_rejected_logp=ref[1], ref_id=REF)
    sample = {"__key__": key, "chosen.npy": npy_bytes(codes(chosen, 0)), "rejected.npy": npy_bytes(codes(rejected, 1)),
              "json": meta}
    sample.update(changes)
    sample["json"] = json.dumps(sample["json"]).encode()
    return {k: v for k, v in sample.items() if v is not None}


def write_pairs(out, samples: list[dict], reference: str | None = REF):
    out.mkdir()
    with wds.TarWriter(str(out / "pairs-000000.tar")) as sink:
        for sample in samples:
            sink.write(sample)
    extra = {"reference": {"id": reference}} if reference else {}
    write_manifest(out, "pairs", [{"name": "pairs-000000.tar", "samples": len(samples), "seconds": 1.0}], 16000,
                   n_q=N_Q, codebook_size=CODEBOOK, frame_rate=50, **extra)
    return out


def first_batch(shards, batch_size: int, **cfg) -> dict:
    data = DataConfig(shards=str(shards), batch_size=batch_size, num_workers=0, shuffle_buffer=0, context_frames=8,
                      **cfg)
    return next(iter(build_loader(data, "pairs", 0, 1, seed=0)))


def test_a_batch_holds_the_chosen_sides_then_the_rejected_with_their_reference_logprobs(tmp_path):
    shards = write_pairs(tmp_path / "p", [pair("a", 5, 3, (-1.0, -2.0)), pair("b", 4, 8, (-3.0, -4.0))])
    batch = first_batch(shards, 2)
    assert batch["keys"] == ["a", "b"] and batch["text"] == ["caption a", "caption b"]
    assert batch["codes"].shape == (4, N_Q, 8) and batch["lengths"].tolist() == [5, 4, 3, 8]
    assert torch.equal(batch["codes"][1, :, :4], torch.from_numpy(codes(4, 0)).long())
    assert torch.equal(batch["codes"][2, :, :3], torch.from_numpy(codes(3, 1)).long())
    assert batch["codes"][2, :, 3:].abs().sum() == 0
    assert batch["ref_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]
    dynamic = first_batch(shards, 2, batching="dynamic", max_seconds_per_batch=1.0)
    assert dynamic["codes"].shape[-1] == max(dynamic["lengths"].tolist())


def test_pairs_without_a_reference_carry_no_logprobs(tmp_path):
    batch = first_batch(write_pairs(tmp_path / "p", [pair("a", 5, 3, None)], reference=None), 1)
    assert "ref_logps" not in batch


@pytest.mark.parametrize("bad, reason", [
    (pair("x", 5, 3, **{"rejected.npy": None}), MISSING_MEMBER),  # no rejected tokens
    (pair("x", 5, 5, **{"rejected.npy": npy_bytes(codes(5, 0))}), IDENTICAL_PAIR),
    (pair("x", 9, 3), LONG_PAIR),  # beyond data.context_frames=8: never cropped
    (pair("x", 5, 3, None), BAD_JSON),  # no reference log-probs in a set that has them
    (pair("x", 5, 3, json={"text": "t", "chosen_frames": 5, "rejected_frames": 3, "ref_id": "lm:other",
                           "ref_chosen_logp": -1.0, "ref_rejected_logp": -2.0}), BAD_JSON),
])
def test_a_bad_pair_is_skipped_and_counted(tmp_path, bad, reason):
    shards = write_pairs(tmp_path / "p", [bad, pair("good", 5, 3)])
    batch = first_batch(shards, 1)
    assert batch["keys"] == ["good"] and batch["skipped"] == {reason: 1}
