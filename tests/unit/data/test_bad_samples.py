"""Issue 21: no sample takes a reader down; limits that protect memory hold before any work;
dynamic batching measures clips by their headers; a reader that fails on every sample stops."""

import io
import itertools

import numpy as np
import pytest
import webdataset as wds

from aurora.data import DataConfig, DataError, build_loader
from aurora.data.audio import AudioExamples
from aurora.data.manifest import write_manifest
from aurora.data.skips import (BAD_SAMPLE_RATE, MAX_ERRORS_IN_A_ROW, SAMPLE_ERROR, TOO_LARGE, TOO_LONG, BadSample)
from aurora.data.tars import ShardReader, TarWriter
from aurora.data.tokens import TokenExamples
from tests.unit.data.test_loader import codes_of, flac_of, meta, npy, silence_flac, wav_at

N_Q, CODEBOOK = 4, 16


def audio_set(out, samples: list[dict], rate=None):
    with wds.TarWriter(str(out / "shard-000000.tar")) as writer:
        for sample in samples:
            writer.write(sample)
    write_manifest(out, "audio", [{"name": "shard-000000.tar", "samples": len(samples), "seconds": 1.0}], rate)
    return out


def token_set(out, samples: list[dict], **manifest):
    with wds.TarWriter(str(out / "shard-000000.tar")) as writer:
        for sample in samples:
            writer.write(sample)
    fields = {"n_q": N_Q, "codebook_size": CODEBOOK, "frame_rate": 50.0, "codec": "test", **manifest}
    write_manifest(out, "tokens", [{"name": "shard-000000.tar", "samples": len(samples), "seconds": 1.0}], 16000,
                   **{k: v for k, v in fields.items() if v is not None})
    return out


def audio_config(shards, **overrides):
    values = dict(shards=str(shards), batch_size=1, num_workers=0, shuffle_buffer=0, sample_rate=16000,
                  segment_seconds=1.0)
    return DataConfig(**{**values, **overrides})


def take(loader, n):
    return list(itertools.islice(loader, n))


# -- every failure is the sample's skip; a reader failing on every sample stops ------------------
def test_an_unforeseen_error_is_the_samples_counted_skip(tmp_path, monkeypatch):
    shards = audio_set(tmp_path, [{"__key__": f"c{i}", "flac": flac_of(1600, seed=i), "json": meta()} for i in range(4)])
    decode = AudioExamples.decode

    def flaky(self, sample, rng):
        if sample["__key__"] == "c1":
            raise ZeroDivisionError("no rule foresaw this")
        return decode(self, sample, rng)

    monkeypatch.setattr(AudioExamples, "decode", flaky)
    batches = take(build_loader(audio_config(shards), "audio", 0, 1, seed=0), 3)
    assert [b["keys"] for b in batches] == [["c0"], ["c2"], ["c3"]]
    assert batches[1]["skipped"] == {SAMPLE_ERROR: 1}


def test_a_reader_that_fails_on_every_sample_stops(tmp_path, monkeypatch):
    """A programming error repeats on every sample: after MAX_ERRORS_IN_A_ROW of them (BadSamples
    between them change nothing) the reader raises it instead of skipping the whole data set."""
    samples = []
    for i in range(2 * MAX_ERRORS_IN_A_ROW):
        samples.append({"__key__": f"c{i}", "flac": flac_of(1600, seed=i), "json": meta()})
        samples.append({"__key__": f"bad{i}", "json": meta()})  # missing_member: a BadSample
    shards = audio_set(tmp_path, samples)
    calls = []

    def broken(self, sample, rng):
        calls.append(sample["__key__"])
        raise TypeError("a bug")

    monkeypatch.setattr(AudioExamples, "decode", broken)
    with pytest.raises(TypeError, match="a bug"):
        take(build_loader(audio_config(shards), "audio", 0, 1, seed=0), 1)
    assert len(calls) == MAX_ERRORS_IN_A_ROW


# -- limits checked on the header, before work -----------------------------------------------------
@pytest.mark.parametrize("rate", [48_001, 2**31 - 1])
def test_a_rate_no_filter_is_built_for_is_skipped_before_resampling(rate):
    """A 244-byte WAV at 48,001 Hz would need a 4.6 GB resampling filter; at 2^31-1 Hz it never returns."""
    sample = {"__key__": "k", "flac": wav_at(rate), "json": meta()}
    assert len(sample["flac"]) == 244
    for work in (lambda e: e.decode(sample, lambda: np.random.default_rng(0)), lambda e: e.seconds(sample)):
        with pytest.raises(BadSample) as bad:
            work(AudioExamples(16000, 1.0))
        assert bad.value.reason == BAD_SAMPLE_RATE
    AudioExamples(16000, 1.0).decode({**sample, "flac": wav_at(48_000)}, lambda: np.random.default_rng(0))


def test_whole_clips_longer_than_max_seconds_are_skipped_unread(monkeypatch):
    """Tokenizing decodes whole clips: the header's length is checked first."""
    import aurora.data.audio as audio

    sample = {"__key__": "k", "flac": silence_flac(20.0), "json": meta()}
    reads = []
    read = audio.read_frames
    monkeypatch.setattr(audio, "read_frames", lambda *a: reads.append(a) or read(*a))
    with pytest.raises(BadSample) as bad:
        AudioExamples(16000, None, max_seconds=10.0).decode(sample, None)
    assert bad.value.reason == TOO_LONG and not reads
    assert len(AudioExamples(16000, None, max_seconds=30.0).decode(sample, None)["audio"]) == 320_000


def test_only_the_members_a_recipe_reads_are_read_and_capped(tmp_path):
    small, large = flac_of(1600), flac_of(48_000, seed=1)
    cap = (len(small) + len(large)) // 2
    unused = bytes(10 * cap)
    shards = audio_set(tmp_path, [{"__key__": "a", "flac": small, "json": meta(), "extra.bin": unused},
                                  {"__key__": "b", "flac": large, "json": meta()},
                                  {"__key__": "c", "flac": small, "json": meta()}])
    read = ShardReader(str(shards / "shard-000000.tar")).sample(0, AudioExamples.members, cap)
    assert set(read) == {"__key__", "__url__", "flac", "json"}
    batches = take(build_loader(audio_config(shards, max_member_mb=cap / 1e6), "audio", 0, 1, seed=0), 2)
    assert [b["keys"] for b in batches] == [["a"], ["c"]]
    assert batches[1]["skipped"] == {TOO_LARGE: 1}


def test_token_manifests_must_give_the_codebook_size(tmp_path):
    """Without it, codes past the model's embeddings would reach the model (on a GPU, a device-side assert)."""
    shards = token_set(tmp_path, [{"__key__": "a", "codes.npy": npy(codes_of(10)), "json": meta()}],
                       codebook_size=None)
    cfg = DataConfig(shards=str(shards), batch_size=1, num_workers=0, context_frames=16)
    with pytest.raises(DataError, match="codebook_size"):
        build_loader(cfg, "tokens", 0, 1, seed=0)


# -- dynamic batching measures clips by their headers -------------------------------------------
def test_dynamic_batches_are_sized_by_the_audio_header_not_the_json(tmp_path):
    """24 one-second clips labelled 0.001 s: by the json they would all share one batch, 6x the budget."""
    shards = audio_set(tmp_path, [{"__key__": f"c{i:02d}", "flac": flac_of(16000, seed=i), "json": meta(duration=0.001)}
                                  for i in range(24)], rate=16000)
    cfg = audio_config(shards, batching="dynamic", max_seconds_per_batch=4.0, shuffle_buffer=24)
    batches = take(build_loader(cfg, "audio", 0, 1, seed=0), 6)
    assert sorted(k for b in batches for k in b["keys"]) == [f"c{i:02d}" for i in range(24)]
    assert all(b["audio"].shape[0] * b["audio"].shape[-1] <= 4 * 16000 for b in batches)


def test_dynamic_token_batches_are_sized_by_the_npy_header_not_the_json(tmp_path):
    shards = token_set(tmp_path, [{"__key__": f"c{i:02d}", "codes.npy": npy(codes_of(50, seed=i)),
                                   "json": meta(frames=1)} for i in range(12)])
    cfg = DataConfig(shards=str(shards), batching="dynamic", max_seconds_per_batch=3.0, num_workers=0,
                     shuffle_buffer=12, context_frames=50)
    examples = TokenExamples(N_Q, 50, 50.0, codebook_size=CODEBOOK)
    assert examples.seconds({"__key__": "c", "codes.npy": npy(codes_of(50)), "json": meta(frames=1)}) == 1.0
    batches = take(build_loader(cfg, "tokens", 0, 1, seed=0), 4)
    assert [b["codes"].shape[0] for b in batches] == [3, 3, 3, 3]


# -- keys: refused at read (aurora.data.members) and at write ---------------------------------------
@pytest.mark.parametrize("key", ["../up", "/abs/path", "a/../../up"])
def test_writers_refuse_keys_that_leave_the_tars_folder(key):
    with pytest.raises(ValueError, match="absolute path or climbs out"):
        TarWriter(io.BytesIO()).write({"__key__": key, "json": b"{}"})
    TarWriter(io.BytesIO()).write({"__key__": "sub/fine", "json": b"{}"})
