"""data.backend=dali (aurora.data.dali): CPU DALI pipelines over the synthetic 16 kHz FLAC shards."""

import io
import itertools
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch
import torchaudio

pytest.importorskip("nvidia.dali")

from aurora.data.audio import AudioExamples  # noqa: E402
from aurora.data.config import DataConfig, DataError  # noqa: E402
from aurora.data.dali import build_dali_loader  # noqa: E402
from aurora.data.manifest import resolve_shards  # noqa: E402
from aurora.data.tars import read_shard  # noqa: E402


@pytest.fixture(autouse=True)
def index_dir(tmp_path_factory, monkeypatch):
    """DALI index files go to a test directory, not ~/.cache."""
    monkeypatch.setenv("AURORA_DALI_INDEX_DIR", str(tmp_path_factory.getbasetemp() / "dali-index"))


def make(shards, rank=0, world_size=1, seed=0, kind="audio", **overrides):
    cfg = DataConfig(shards=str(shards), backend="dali", **{"batch_size": 4, **overrides})
    urls, manifest = resolve_shards(cfg.shards)
    return build_dali_loader(cfg, kind, rank, world_size, seed, urls, manifest)


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def raw_samples(shards) -> dict:
    urls, _ = resolve_shards(str(shards))
    return {s["__key__"]: s for url in urls for s in read_shard(url, lambda *a: None, None)}


def test_batch_shapes_and_dtypes(audio_shards):
    loader = make(audio_shards, segment_seconds=0.5)
    for batch in take(loader, 3):
        assert set(batch) == {"audio", "lengths", "text", "keys", "skipped"}
        assert batch["audio"].shape == (4, 1, 8000) and batch["audio"].dtype == torch.float32
        assert batch["audio"].device.type == "cpu"
        assert batch["lengths"].shape == (4,) and batch["lengths"].dtype == torch.int64
        assert (batch["lengths"] == 8000).all()  # clips are 0.6-1.2 s: all cropped
        assert len(batch["text"]) == 4 and all(isinstance(t, str) and t for t in batch["text"])
        assert len(batch["keys"]) == 4 and all(isinstance(k, str) for k in batch["keys"])
        assert batch["skipped"] == {}


def test_audio_matches_native_decode(audio_shards):
    """Clips shorter than the segment: no crop, so DALI's audio must be what soundfile decodes."""
    samples = raw_samples(audio_shards)
    native = AudioExamples(16000, 2.0)
    loader = make(audio_shards, segment_seconds=2.0, batch_size=8)
    seen = set()
    for batch in take(loader, 3):
        assert batch["audio"].shape == (8, 1, 32000)
        for i, key in enumerate(batch["keys"]):
            ref = native.decode(samples[key], lambda: np.random.default_rng(0))
            n = int(batch["lengths"][i])
            assert n == len(ref["audio"]) < 32000
            torch.testing.assert_close(batch["audio"][i, 0, :n], ref["audio"], atol=1e-6, rtol=0)
            assert (batch["audio"][i, 0, n:] == 0).all()
            assert batch["text"][i] == ref["text"]
            seen.add(key)
    assert seen == set(samples)  # one epoch of a single rank: every sample once


def test_resampled_audio_close_to_native(audio_shards):
    """DALI's windowed-sinc resampler differs from torchaudio's near Nyquist: close, not equal."""
    samples = raw_samples(audio_shards)
    native = AudioExamples(8000, 2.0)
    batch = take(make(audio_shards, segment_seconds=2.0, sample_rate=8000, batch_size=8), 1)[0]
    assert batch["audio"].shape == (8, 1, 16000)
    for i, key in enumerate(batch["keys"]):
        ref = native.decode(samples[key], lambda: np.random.default_rng(0))["audio"]
        n = int(batch["lengths"][i])
        assert n == len(ref)
        got = batch["audio"][i, 0, :n]
        assert (got - ref).abs().max() < 0.05
        assert np.corrcoef(got.numpy(), ref.numpy())[0, 1] > 0.999


@pytest.mark.parametrize("rate", [16000, 22050])
def test_mel_matches_torchaudio(audio_shards, rate):
    bins = 40
    batch = take(make(audio_shards, segment_seconds=1.0, sample_rate=rate, dali_mel_bins=bins), 1)[0]
    segment = round(1.0 * rate)
    window, hop = 2 * round(0.0125 * rate), round(0.010 * rate)
    assert batch["mel"].shape == (4, bins, 1 + segment // hop) and batch["mel"].dtype == torch.float32
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=rate, n_fft=1 << (window - 1).bit_length(), win_length=window, hop_length=hop, n_mels=bins,
        power=2.0, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")
    ref = 10 * torch.log10(mel(batch["audio"][:, 0]).clamp(min=1e-10))
    # Same definition: equal up to float32 rounding (largest in near-silent bins).
    torch.testing.assert_close(batch["mel"], ref, atol=0.1, rtol=0)


def test_two_ranks_see_disjoint_keys(audio_shards):
    """24 samples, 2 ranks, batch 4: 3 batches are one epoch of a rank."""
    for shuffle_buffer in (0, 100):
        ranks = [make(audio_shards, rank=r, world_size=2, shuffle_buffer=shuffle_buffer) for r in (0, 1)]
        keys = [[k for b in take(loader, 6) for k in b["keys"]] for loader in ranks]
        for epoch in range(2):
            a, b = (set(k[epoch * 12: (epoch + 1) * 12]) for k in keys)
            assert len(a) == len(b) == 12
            assert not a & b and len(a | b) == 24


def test_resume_gives_the_same_next_batches(audio_shards):
    # Crops (0.5 s of 0.6-1.2 s clips) and mel make the pipeline's RNG state part of the check;
    # 7 batches of 4 cross the 24-sample epoch.
    settings = dict(segment_seconds=0.5, dali_mel_bins=16, shuffle_buffer=8)
    whole = take(make(audio_shards, seed=3, **settings), 11)
    first = make(audio_shards, seed=3, **settings)
    assert [b["keys"] for b in take(first, 7)] == [b["keys"] for b in whole[:7]]
    state = first.state_dict()
    resumed = make(audio_shards, seed=3, **settings)
    resumed.load_state_dict([state])
    rest = take(resumed, 4)
    assert [b["keys"] for b in rest] == [b["keys"] for b in whole[7:]]
    for got, want in zip(rest, whole[7:]):
        torch.testing.assert_close(got["audio"], want["audio"])
        torch.testing.assert_close(got["mel"], want["mel"])
    # The same loader also continues across iter() calls.
    assert [b["keys"] for b in take(first, 2)] == [b["keys"] for b in whole[7:9]]


def test_state_before_any_batch_restarts_from_the_beginning(audio_shards):
    fresh = make(audio_shards, seed=1)
    other = make(audio_shards, seed=1)
    other.load_state_dict([fresh.state_dict()])
    assert [b["keys"] for b in take(other, 2)] == [b["keys"] for b in take(make(audio_shards, seed=1), 2)]


def test_elastic_or_foreign_resume_is_refused(audio_shards):
    saved = make(audio_shards, rank=0, world_size=2)
    take(saved, 1)
    other_rank = make(audio_shards, rank=1, world_size=2)
    take(other_rank, 1)
    states = [saved.state_dict(), other_rank.state_dict()]
    with pytest.raises(DataError, match="elastic resume needs data.backend=native"):
        make(audio_shards, rank=0, world_size=1).load_state_dict(states)
    with pytest.raises(DataError, match="elastic resume needs data.backend=native"):
        make(audio_shards, rank=1, world_size=2).load_state_dict(states[::-1])
    with pytest.raises(DataError, match="run.seed"):
        make(audio_shards, rank=0, world_size=2, seed=9).load_state_dict(states)
    native_state = {"version": 2, "kind": "audio", "seed": 0, "rank": 0, "world_size": 1, "batches": 1}
    with pytest.raises(DataError, match="data.backend=native"):
        make(audio_shards).load_state_dict([native_state])


def test_unsupported_settings_raise(audio_shards, monkeypatch):
    with pytest.raises(DataError, match="audio shards only.*data.backend=native"):
        make(audio_shards, kind="tokens")
    with pytest.raises(DataError, match="data.batching=fixed"):
        make(audio_shards, batching="dynamic")
    with pytest.raises(DataError, match="data.dali_device"):
        make(audio_shards, dali_device="mixed")
    with pytest.raises(DataError, match="fewer than the 40 ranks"):
        make(audio_shards, world_size=40)
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="needs a CUDA GPU"):
            make(audio_shards, dali_device="gpu")
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails
    with pytest.raises(DataError, match=r"pip install nvidia-dali-cuda130"):
        make(audio_shards)


def _rewrite_member(src, dst, member, data):
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for info in tin.getmembers():
            body = tin.extractfile(info).read()
            if info.name == member:
                body, info.size = data, len(data)
            tout.addfile(info, io.BytesIO(body))


def _copy_with(audio_shards, tmp_path, suffix, data):
    shards = tmp_path / "shards"
    shutil.copytree(audio_shards, shards)
    tar = shards / "shard-000001.tar"
    with tarfile.open(tar) as t:
        member = [n for n in t.getnames() if n.endswith(suffix)][2]
    _rewrite_member(audio_shards / tar.name, tar, member, data)
    return shards, member


def test_undecodable_flac_raises_naming_shard_and_member(audio_shards, tmp_path):
    shards, member = _copy_with(audio_shards, tmp_path, ".flac", b"not a flac file" * 64)
    loader = make(shards, batch_size=4, shuffle_buffer=0)
    with pytest.raises(DataError) as info:
        take(loader, 7)  # one epoch of 24 samples is 6 batches
    message = str(info.value)
    assert member in message and "shard-000001.tar" in message and "data.backend=native" in message


def test_truncated_tar_is_refused_naming_it(audio_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(audio_shards, shards)
    tar = shards / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError, match="shard-000001.tar is truncated"):
        make(shards)


def test_a_member_over_the_size_limit_is_refused_from_the_index(audio_shards, tmp_path):
    """DALI cannot skip a sample it reads: a member over data.max_member_mb stops the start, by
    the size in the index, naming the shard and the sample."""
    shards, member = _copy_with(audio_shards, tmp_path, ".flac", b"\0" * 300_000)
    with pytest.raises(DataError, match=rf"shard-000001.tar: the .flac of sample {member.removesuffix('.flac')} is "
                                        rf"0.3 MB, over data.max_member_mb=0.25"):
        make(shards, max_member_mb=0.25)
    make(audio_shards, max_member_mb=0.25)  # the intact shards' members are smaller


def test_bad_json_keeps_the_example_and_counts_it(audio_shards, tmp_path):
    shards, member = _copy_with(audio_shards, tmp_path, ".json", b"{not json")
    batches = take(make(shards, shuffle_buffer=0), 6)
    key = member.removesuffix(".json")
    found = [(b, b["keys"].index(key)) for b in batches if key in b["keys"]]
    assert len(found) == 1
    batch, i = found[0]
    assert batch["text"][i] == "" and batch["skipped"] == {"bad_json": 1}
    assert sum(sum(b["skipped"].values()) for b in batches) == 1


def test_gpu_pipeline(audio_shards):
    """dali_device=gpu: audio and mel come back as CUDA tensors equal to the CPU pipeline's."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    settings = dict(segment_seconds=0.5, dali_mel_bins=32)
    cpu = take(make(audio_shards, **settings), 2)
    gpu = take(make(audio_shards, dali_device="gpu", **settings), 2)
    for c, g in zip(cpu, gpu):
        assert g["audio"].is_cuda and g["mel"].is_cuda and not g["lengths"].is_cuda
        assert g["keys"] == c["keys"]
        torch.testing.assert_close(g["audio"].cpu(), c["audio"])
        torch.testing.assert_close(g["mel"].cpu(), c["mel"], atol=0.1, rtol=0)

