"""Latent shards: ``data_prep.tokenize --latents`` writes each clip's codec-encoder output before
quantization (float16), the loader reads them back, and a task pointed at no latent shards is told
how to make them."""

import io

import numpy as np
import pytest
import torch

from aurora.data import build_loader
from aurora.data.config import DataConfig, DataError
from aurora.data.latents import LatentExamples
from aurora.data.manifest import read_manifest
from aurora.data.skips import BadSample
from aurora.data.tars import read_shard
from aurora.tasks.codec import load_codec
from data_prep import tokenize
from tests.helpers.tokens import source_clips


def _samples(shards) -> dict:
    out = {}
    for shard in read_manifest(shards)["shards"]:
        for sample in read_shard(str(shards / shard["name"]), lambda *a: pytest.fail(str(a))):
            out[sample["__key__"]] = np.load(io.BytesIO(sample["latents.npy"]))
    return out


def test_latents_are_the_encoders_output_before_quantization(audio_shards, codec_dir, latents):
    codec = load_codec(codec_dir).codec
    clips = source_clips(audio_shards)
    written = _samples(latents)
    assert list(written) == list(clips)
    for key, value in written.items():
        with torch.no_grad():
            alone = codec.encoder(torch.nn.functional.pad(clips[key].view(1, 1, -1), (0, -len(clips[key]) % 320)))[0]
            quantized = codec.quantizer.decode(codec.quantizer.encode(alone[None]))[0]
        assert value.dtype == np.float16 and value.shape == (16, -(-len(clips[key]) // 320))
        # fp16 storage: within half a unit in the last place of fp16 (2^-11 relative), plus float rounding
        np.testing.assert_allclose(value.astype(np.float32), alone.numpy(), rtol=2**-10, atol=1e-4, err_msg=key)
        assert np.abs(value - quantized.numpy()).max() > 1e-2  # before quantization, not after
    manifest = read_manifest(latents)
    assert manifest["kind"] == "latents"
    assert [manifest[k] for k in ("latent_dim", "latent_dtype", "frame_rate", "sample_rate")] == [16, "float16", 50.0,
                                                                                                  16000]
    assert manifest["codec_id"] == tokenize.codec_id(codec) == tokenize.codec_id(load_codec(latents / "codec").codec)

    data = DataConfig(shards=str(latents), batch_size=4, num_workers=0, context_frames=40, shuffle_buffer=0)
    batch = next(iter(build_loader(data, "latents", 0, 1, seed=0)))
    assert batch["latents"].shape == (4, 16, 40) and batch["latents"].dtype == torch.float32
    for i, key in enumerate(batch["keys"]):
        n = int(batch["lengths"][i])
        held = torch.from_numpy(written[key].astype(np.float32))
        # a random crop of the clip's latents, zero beyond its length
        starts = [s for s in range(held.shape[1] - n + 1) if torch.equal(held[:, s: s + n], batch["latents"][i, :, :n])]
        assert starts and not batch["latents"][i, :, n:].any(), key


def test_missing_or_wrong_latent_shards_say_how_to_make_them(tokens, tmp_path):
    data = DataConfig(shards=str(tokens), num_workers=0)
    with pytest.raises(DataError, match=r"holds tokens shards, but this task trains on latents: point data.shards at "
                                        r"latents shards \(made from audio shards and a codec by data_prep.tokenize --latents\)"):
        build_loader(data, "latents", 0, 1, seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_loader(DataConfig(shards=str(tmp_path / "none"), num_workers=0), "latents", 0, 1, seed=0)

    examples = LatentExamples(16, 40)
    buf = io.BytesIO()
    np.save(buf, np.zeros((16, 5), np.float32))
    with pytest.raises(BadSample, match=r"k.latents.npy is float32 \[16, 5\], not float16 \[latent_dim=16, T\]: "
                                        r"re-create the latent shard with data_prep.tokenize --latents"):
        examples.decode({"__key__": "k", "latents.npy": buf.getvalue(), "json": b'{"text": "x"}'}, None)
