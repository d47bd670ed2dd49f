import io
import itertools
import json
import logging
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from omegaconf import OmegaConf

from aurora.data import DataConfig, DataError, build_loader
from aurora.data.audio import AudioExamples
from aurora.data.manifest import write_manifest
from aurora.data.skips import (BAD_JSON, BAD_KEY, BAD_SAMPLE_RATE, DECODE_ERROR, EMPTY_AUDIO, EMPTY_CODES,
                               MISSING_MEMBER, TOO_LONG)
from aurora.data.tars import ShardReader
from data_prep import make_shards, synth
from tools.inspect_shards import main as inspect_shards

NUM_CLIPS = 32
PER_SHARD = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    synth.main(["--out", str(out), "--num-clips", str(NUM_CLIPS), "--seed", "7",
                "--min-seconds", "0.2", "--max-seconds", "0.6"])
    return out


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    make_shards.main(["--manifest", str(corpus / "metadata.jsonl"), "--out", str(out),
                      "--samples-per-shard", str(PER_SHARD)])
    return out


def config(shards, **overrides):
    values = dict(shards=str(shards), batch_size=4, num_workers=0, shuffle_buffer=8, sample_rate=16000,
                  segment_seconds=0.5)
    values.update(overrides)
    return DataConfig(**values)


def take(loader, n):
    return list(itertools.islice(loader, n))


def keys(batches):
    return [key for batch in batches for key in batch["keys"]]


def source_audio(corpus, key):
    audio, _ = sf.read(corpus / "clips" / f"{key.split('__')[1]}.flac", dtype="float32")
    return audio


def shard_members(path):
    """{key: {ext: bytes}} of a tar, in order."""
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


# -- batches --------------------------------------------------------------------------------------
def test_audio_batch_shapes_lengths_and_crops(corpus, shards):
    batches = take(build_loader(config(shards), "audio", rank=0, world_size=1, seed=0), NUM_CLIPS // 4)
    assert sorted(keys(batches)) == sorted(f"clips__{i:06d}" for i in range(NUM_CLIPS))
    for batch in batches:
        assert set(batch) == {"audio", "lengths", "text", "keys", "skipped"}
        assert batch["audio"].shape == (4, 1, 8000) and batch["audio"].dtype == torch.float32
        assert batch["lengths"].dtype == torch.long and batch["skipped"] == {}
        assert all(isinstance(t, str) and t for t in batch["text"])
        for i, key in enumerate(batch["keys"]):
            source, n = source_audio(corpus, key), int(batch["lengths"][i])
            assert n == min(len(source), 8000)
            window = batch["audio"][i, 0, :n].numpy()
            starts = [s for s in range(len(source) - n + 1) if np.array_equal(source[s: s + n], window)]
            assert starts, f"{key}: the example is not a window of its clip"
            assert not batch["audio"][i, 0, n:].any()


def test_audio_is_resampled_to_the_configured_rate(corpus, shards):
    batch = take(build_loader(config(shards, sample_rate=8000), "audio", 0, 1, seed=0), 1)[0]
    assert batch["audio"].shape == (4, 1, 4000)
    for i, key in enumerate(batch["keys"]):
        assert int(batch["lengths"][i]) == min(4000, -(-len(source_audio(corpus, key)) // 2))


def test_crops_depend_only_on_seed_epoch_and_key(shards):
    by_key = {}
    for workers, buffer in ((0, 8), (2, 3)):
        loader = build_loader(config(shards, num_workers=workers, shuffle_buffer=buffer), "audio", 0, 1, seed=0)
        for batch in take(loader, NUM_CLIPS // 4):
            for key, audio in zip(batch["keys"], batch["audio"]):
                by_key.setdefault(key, []).append(audio)
    assert all(len(v) == 2 and torch.equal(v[0], v[1]) for v in by_key.values())


# -- splitting across ranks and workers -------------------------------------------------------------
@pytest.mark.parametrize("spec, samples", [("", NUM_CLIPS), ("/shard-{000000..000001}.tar", 2 * PER_SHARD)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(shards, spec, samples):
    # 4 readers: with 4 shards each reads one; with 2 shards each reads half of one.
    batch_size = samples // 8
    seen = []
    for rank in range(2):
        loader = build_loader(config(f"{shards}{spec}", batch_size=batch_size, num_workers=2), "audio", rank, 2, 0)
        seen += keys(take(loader, 4))  # 4 readers x 2 batches x batch_size = one epoch
    assert len(seen) == samples and len(set(seen)) == samples


def test_no_rank_starves_with_fewer_shards_than_readers(shards):
    one_shard = f"{shards}/shard-000000.tar"  # 8 samples for 3 ranks x 2 workers
    for rank in range(3):
        batches = take(build_loader(config(one_shard, batch_size=3, num_workers=2), "audio", rank, 3, 0), 4)
        assert len(batches) == 4 and all(len(b["keys"]) == 3 for b in batches)


def test_uneven_shards_give_every_reader_an_equal_share(tmp_path, shards):
    """Shards of 8, 1 and 3 samples over 3 readers: 4 samples each per epoch, so all ranks move
    through epochs together and none waits on another's long shard."""
    members = shard_members(shards / "shard-000000.tar")
    entries = []
    for i, n in enumerate((8, 1, 3)):
        name = f"shard-{i:06d}.tar"
        with wds.TarWriter(str(tmp_path / name)) as writer:
            for key in list(members)[:n]:
                writer.write({"__key__": f"s{i}_{key}", **members[key]})
        entries.append({"name": name, "samples": n, "seconds": 1.0})
    write_manifest(tmp_path, "audio", entries, 16000)
    per_rank = [keys(take(build_loader(config(tmp_path, batch_size=4, num_workers=0), "audio", r, 3, 5), 1))
                for r in range(3)]
    assert sorted(k for ks in per_rank for k in ks) == sorted(f"s{i}_{k}" for i, n in enumerate((8, 1, 3))
                                                             for k in list(members)[:n])


# -- exact resume -----------------------------------------------------------------------------------
def take_on_every_rank(cfg, world, seed, n, kind="audio"):
    """Loaders of every rank after taking n batches each, and the batches."""
    loaders = [build_loader(cfg, kind, r, world, seed) for r in range(world)]
    return loaders, [take(loader, n) for loader in loaders]


def resumed_after(cfg, kind, seed, taken):
    """A rank-0-of-1 loader resumed from another's state after that one took ``taken`` batches."""
    first = build_loader(cfg, kind, 0, 1, seed=seed)
    take(first, taken)
    resumed = build_loader(cfg, kind, 0, 1, seed=seed)
    resumed.load_state_dict([first.state_dict()])
    return resumed


def saved_states(loaders):
    return [json.loads(json.dumps(loader.state_dict())) for loader in loaders]  # plain data, as checkpointed


@pytest.mark.parametrize("spec, taken, more", [("", 7, 6), ("", 4, 9), ("/shard-000000.tar", 5, 6)])
def test_resume_continues_the_uninterrupted_stream(shards, spec, taken, more):
    cfg = config(f"{shards}{spec}", num_workers=2)
    reference = take(build_loader(cfg, "audio", 1, 2, seed=3), taken + more)
    first, _ = take_on_every_rank(cfg, 2, 3, taken)
    resumed = build_loader(cfg, "audio", 1, 2, seed=3)
    resumed.load_state_dict(saved_states(first))
    continued = take(resumed, more)
    assert keys(continued) == keys(reference[taken:])
    for got, want in zip(continued, reference[taken:]):
        assert torch.equal(got["audio"], want["audio"]) and torch.equal(got["lengths"], want["lengths"])


def test_resume_state_format(shards):
    loader = build_loader(config(shards, num_workers=2), "audio", 0, 1, seed=3)
    take(loader, 3)
    state = loader.state_dict()
    assert state["shards"] and len(state["shards"]) == 40
    assert {k: v for k, v in state.items() if k != "shards"} == {
        "version": 2, "kind": "audio", "seed": 3, "rank": 0, "world_size": 1, "num_workers": 2,
        "shuffle_buffer": 8, "batches": 3, "plan": {"readers": 2, "partial": {}},
        "workers": [{"epoch": 0, "draws": 8, "waiting": []}, {"epoch": 0, "draws": 4, "waiting": []}]}


def test_resume_reads_only_the_shuffle_buffer_again(shards, monkeypatch):
    resumed = resumed_after(config(shards), "audio", 0, 5)
    reads, decodes = [], []
    sample, decode = ShardReader.sample, AudioExamples.decode
    monkeypatch.setattr(ShardReader, "sample", lambda self, n, *a: reads.append(n) or sample(self, n, *a))
    monkeypatch.setattr(AudioExamples, "decode", lambda self, *a: decodes.append(1) or decode(self, *a))
    take(resumed, 1)
    # The 7 samples held in the 8-sample buffer, then one new sample per draw of the batch.
    assert len(reads) == 7 + 4 and len(decodes) == 4


@pytest.mark.parametrize("change, message", [
    (dict(seed=9), "seed: saved 3, now 9"),
    (dict(spec="/shard-{000000..000002}.tar"), "shards: saved"),
])
def test_resume_with_another_seed_or_shard_set_is_a_clear_error(shards, change, message):
    loaders, _ = take_on_every_rank(config(shards, num_workers=2), 2, 3, 1)
    other = build_loader(config(f"{shards}{change.get('spec', '')}", num_workers=2), "audio", 0, 2,
                         change.get("seed", 3))
    with pytest.raises(DataError, match=message) as err:
        other.load_state_dict(saved_states(loaders))
    assert "same run.seed and the same shard set" in str(err.value)


def test_an_unknown_state_version_is_a_clear_error(shards):
    loader = build_loader(config(shards), "audio", 0, 1, seed=0)
    with pytest.raises(DataError, match="state version 1 is not supported"):
        loader.load_state_dict([{"version": 1, "rank": 0}])


# -- bad input --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_shards(shards, tmp_path_factory):
    """shard-000000: 8 good samples, a corrupt FLAC and a malformed json; shard-000001 cut inside
    its 4th sample; shard-000002 cut at a member boundary after 5 samples; shard-000003 intact."""
    out = tmp_path_factory.mktemp("bad")
    good = shard_members(shards / "shard-000000.tar")
    a_json, a_flac = next(iter(good.values()))["json"], next(iter(good.values()))["flac"]
    with wds.TarWriter(str(out / "shard-000000.tar")) as writer:
        for key, members in good.items():
            writer.write({"__key__": key, **members})
        writer.write({"__key__": "bad_flac", "flac": b"fLaC\x00\x00\x00\x22garbage", "json": a_json})
        writer.write({"__key__": "bad_json", "flac": a_flac, "json": b'{"text": "unterminated'})
    for name, cut in (("shard-000001.tar", "inside"), ("shard-000002.tar", "boundary")):
        data = (shards / name).read_bytes()
        with tarfile.open(shards / name) as tar:
            members = tar.getmembers()
        end = members[7].offset_data + 100 if cut == "inside" else members[10].offset
        (out / name).write_bytes(data[:end])
    (out / "shard-000003.tar").write_bytes((shards / "shard-000003.tar").read_bytes())
    counts = [10, PER_SHARD, PER_SHARD, PER_SHARD]
    write_manifest(out, "audio", [{"name": f"shard-{i:06d}.tar", "samples": n, "seconds": 1.0}
                                  for i, n in enumerate(counts)], 16000)
    return out


def test_bad_members_are_skipped_and_counted(bad_shards, caplog):
    # Unshuffled, the two bad samples end every epoch: the next batch reports them.
    cfg = config(f"{bad_shards}/shard-000000.tar", batch_size=1, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING):
        batches = take(build_loader(cfg, "audio", 0, 1, seed=0), 2 * PER_SHARD + 1)
    good = [k for k in shard_members(bad_shards / "shard-000000.tar") if not k.startswith("bad_")]
    assert keys(batches[:PER_SHARD]) == good and keys(batches[PER_SHARD: 2 * PER_SHARD]) == good
    reports = {i: b["skipped"] for i, b in enumerate(batches) if b["skipped"]}
    assert reports == {PER_SHARD: {"decode_error": 1, "bad_json": 1}, 2 * PER_SHARD: {"decode_error": 1, "bad_json": 1}}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # once per shard and reason, not once per epoch
    assert any("shard-000000.tar" in w and "decode_error" in w and "bad_flac" in w for w in warnings)
    assert any("shard-000000.tar" in w and "bad_json" in w for w in warnings)


def test_truncated_tars_are_counted_and_the_run_goes_on(bad_shards):
    spec = f"{bad_shards}/shard-{{000001..000003}}.tar"
    loader = build_loader(config(spec, batch_size=1, shuffle_buffer=0), "audio", 0, 1, seed=0)
    readable = 3 + 5 + PER_SHARD
    # Two epochs, plus the batch that reports what the end of the second one met (every shard
    # starts with good samples, so the third epoch's problems come later).
    batches = take(loader, 2 * readable + 1)
    assert len(set(keys(batches))) == readable
    totals = {}
    for batch in batches:
        for reason, n in batch["skipped"].items():
            totals[reason] = totals.get(reason, 0) + n
    # Per epoch: each sample the manifest lists but the tars lost (4 after the cut inside shard 1,
    # 3 after the early end of shard 2) is a read_error; the lone member left of the cut sample
    # is a missing_member.
    assert totals == {"read_error": 2 * (4 + 3), "missing_member": 2}


def test_a_file_that_is_no_tar_is_a_read_error(bad_shards, tmp_path, caplog):
    (tmp_path / "shard-000000.tar").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "shard-000001.tar").write_bytes((bad_shards / "shard-000003.tar").read_bytes())
    loader = build_loader(config(f"{tmp_path}/shard-{{000000..000001}}.tar", batch_size=4), "audio", 0, 1, 0)
    with caplog.at_level(logging.WARNING):
        batches = take(loader, 6)  # three epochs
    assert len(set(keys(batches))) == PER_SHARD
    # Once per epoch, reported with the next batch: whether the third epoch's report falls
    # inside these six batches depends on the shard order.
    assert sum(b["skipped"].get("read_error", 0) for b in batches) in (2, 3)
    assert [r.getMessage() for r in caplog.records if "shard-000000.tar: skipped" in r.getMessage()]


def test_resume_is_exact_with_bad_samples(bad_shards):
    cfg = config(bad_shards, batch_size=3, num_workers=2, shuffle_buffer=5)
    reference = take(build_loader(cfg, "audio", 0, 1, seed=1), 16)
    continued = take(resumed_after(cfg, "audio", 1, 5), 11)
    assert keys(continued) == keys(reference[5:])
    assert [b["skipped"] for b in continued] == [b["skipped"] for b in reference[5:]]


def test_unreadable_data_is_a_clear_error_not_a_hang(tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(b"junk")
    with pytest.raises(DataError, match="holds 0 readable samples.*shard-000000.tar: cannot read the tar"):
        build_loader(config(f"{tmp_path}/shard-000000.tar"), "audio", 0, 1, seed=0)


def test_a_shard_set_with_nothing_usable_is_a_clear_error_not_a_hang(tmp_path, shards):
    members = next(iter(shard_members(shards / "shard-000000.tar").values()))
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as writer:
        for i in range(4):
            writer.write({"__key__": f"k{i}", "flac": b"not audio", "json": members["json"]})
    loader = build_loader(config(f"{tmp_path}/shard-000000.tar"), "audio", 0, 1, seed=0)
    with pytest.raises(DataError, match="got no usable sample in epoch 0 from its 4 samples"):
        take(loader, 1)


def test_iterating_leaves_the_global_rng_alone(shards):
    for workers in (0, 2):
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        take(build_loader(config(shards, num_workers=workers), "audio", 0, 1, seed=0), 2)
        assert torch.equal(torch.rand(3), expected)


def test_structured_omegaconf_config(shards):
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"shards": str(shards), "batch_size": 2})
    batch = take(build_loader(cfg.copy(), "audio", 0, 1, seed=0), 1)[0]
    assert batch["audio"].shape == (2, 1, 16000)


def test_config_errors(shards):
    with pytest.raises(DataError, match="data.shards is not set"):
        build_loader(DataConfig(), "audio", 0, 1, 0)
    with pytest.raises(DataError, match="data.batch_size must be > 0"):
        build_loader(config(shards, batch_size=0), "audio", 0, 1, 0)
    with pytest.raises(DataError, match="holds audio shards, but this task trains on tokens"):
        build_loader(config(shards), "tokens", 0, 1, 0)
    with pytest.raises(DataError, match="rank 2 is outside world_size 2"):
        build_loader(config(shards), "audio", 2, 2, 0)


# -- tokens -----------------------------------------------------------------------------------------
N_Q, CONTEXT = 4, 16


@pytest.fixture(scope="module")
def hand_token_shards(tmp_path_factory):
    """2 shards x 5 samples of int16 codes [4, T], T in 3..40; plus one with n_q = 3."""
    out = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    codes = {}
    entries = []
    for shard in range(2):
        name = f"shard-{shard:06d}.tar"
        with wds.TarWriter(str(out / name)) as writer:
            for i in range(5):
                key = f"utt{shard}_{i}"
                codes[key] = rng.integers(0, 1024, size=(N_Q, int(rng.integers(3, 41))), dtype=np.int16)
                writer.write({"__key__": key, "codes.npy": codes[key], "json": {"text": f"caption {key}"}})
            if shard == 1:
                writer.write({"__key__": "wrong_nq", "codes.npy": np.zeros((3, 20), np.int16), "json": {"text": ""}})
        entries.append({"name": name, "samples": 5 + shard, "seconds": 1.0})
    write_manifest(out, "tokens", entries, 16000, n_q=N_Q, codebook_size=1024, frame_rate=50.0, codec="test")
    return out, codes


def test_token_batches(hand_token_shards):
    out, codes = hand_token_shards
    cfg = config(out, batch_size=5, context_frames=CONTEXT)
    batches = take(build_loader(cfg, "tokens", 0, 1, seed=0), 2)
    assert sorted(keys(batches)) == sorted(codes)
    assert sum(b["skipped"].get("decode_error", 0) for b in batches) == 1
    for batch in batches:
        assert set(batch) == {"codes", "lengths", "text", "keys", "skipped"}
        assert batch["codes"].shape == (5, N_Q, CONTEXT) and batch["codes"].dtype == torch.long
        for i, key in enumerate(batch["keys"]):
            source, n = codes[key].astype(np.int64), int(batch["lengths"][i])
            assert n == min(source.shape[1], CONTEXT) and batch["text"][i] == f"caption {key}"
            window = batch["codes"][i, :, :n].numpy()
            assert any(np.array_equal(source[:, s: s + n], window) for s in range(source.shape[1] - n + 1))
            assert not batch["codes"][i, :, n:].any()


def test_token_resume(hand_token_shards):
    out, _ = hand_token_shards
    cfg = config(out, batch_size=3, context_frames=CONTEXT, num_workers=2)
    reference = take(build_loader(cfg, "tokens", 0, 1, seed=0), 9)
    continued = take(resumed_after(cfg, "tokens", 0, 5), 4)
    assert keys(continued) == keys(reference[5:])
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(continued, reference[5:]))


def test_a_dali_position_is_refused_by_the_native_reader(audio_shards):
    loader = build_loader(config(audio_shards), "audio", 0, 1, seed=0)
    with pytest.raises(DataError, match="saved by data.backend=dali: resume with data.backend=dali"):
        loader.load_state_dict([{"backend": "dali", "version": 1}])


# -- one set of rules: what the loader skips, tools.inspect_shards reports with the same reason ------
CODEBOOK = 16


def flac_of(frames: int, rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    noise = 0.1 * np.random.default_rng(seed).standard_normal((frames, channels))
    buffer = io.BytesIO()
    sf.write(buffer, noise.astype(np.float32), rate, format="FLAC")
    return buffer.getvalue()


def damaged_inside(flac: bytes) -> bytes:
    """``flac`` with 2000 bytes in its middle zeroed: the header reads, the middle does not decode."""
    middle = len(flac) // 2
    return flac[:middle] + bytes(2000) + flac[middle + 2000:]


def no_samples() -> bytes:
    """A readable audio file of zero frames (soundfile writes no zero-frame FLAC; a member is
    decoded by its content, whatever its name)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(0, np.float32), 16000, format="WAV")
    return buffer.getvalue()


def wav_at(rate: int) -> bytes:
    """A 244-byte WAV (100 frames) whose header says ``rate`` Hz (patched: soundfile writes no such rate)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(100, np.float32), 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[24:32] = np.array([rate, 2 * rate], "<u4").tobytes()  # the fmt chunk's rate and byte rate
    return bytes(data)


def silence_flac(seconds: float, rate: int = 1000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(round(seconds * rate), np.float32), rate, format="FLAC")
    return buffer.getvalue()


def npy_claiming(shape: tuple) -> bytes:
    """A .npy header of int16 ``shape`` followed by 64 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<i2", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def codes_of(frames: int, n_q: int = N_Q, dtype=np.int16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, CODEBOOK, size=(n_q, frames)).astype(dtype)


def meta(**fields) -> bytes:
    return json.dumps(fields).encode()


def audio_rule_cases() -> tuple[list, list]:
    """``(key, members, length at 16 kHz)`` of valid edge cases, and ``(key, members, reason)``
    of samples that break one rule each."""
    tone, second = flac_of(4800), flac_of(16000, seed=1)
    valid = [
        ("plain", {"flac": tone, "json": meta(text="a tone", duration=0.3)}, 4800),
        ("no_fields", {"flac": tone, "json": b"{}"}, 4800),  # bucketed by the FLAC header
        ("one_frame", {"flac": flac_of(1), "json": meta(text="")}, 1),
        ("stereo_8k", {"flac": flac_of(2000, rate=8000, channels=2),
                       "json": meta(text="ünï 音", duration=0.25, sample_rate=8000, channels=2)}, 4000),
        ("int_duration", {"flac": second, "json": meta(duration=1, speaker=None, tags=[1, 2])}, 16000),
    ]
    bad = [
        ("no_flac", {"json": meta(duration=0.3)}, MISSING_MEMBER),
        ("no_json", {"flac": tone}, MISSING_MEMBER),
        ("json_latin1", {"flac": tone, "json": '{"text": "café"}'.encode("latin-1")}, BAD_JSON),
        ("json_cut", {"flac": tone, "json": b'{"text": "a tone", "dur'}, BAD_JSON),
        ("json_list", {"flac": tone, "json": b'["a tone"]'}, BAD_JSON),
        ("text_number", {"flac": tone, "json": meta(text=42)}, BAD_JSON),
        ("duration_string", {"flac": tone, "json": meta(duration="0.3")}, BAD_JSON),
        ("duration_zero", {"flac": tone, "json": meta(duration=0)}, BAD_JSON),
        ("duration_nan", {"flac": tone, "json": b'{"duration": NaN}'}, BAD_JSON),
        ("duration_bool", {"flac": tone, "json": meta(duration=True)}, BAD_JSON),
        ("flac_garbage", {"flac": b"fLaC" + bytes(range(256)) * 8, "json": b"{}"}, DECODE_ERROR),
        ("flac_cut", {"flac": second[: len(second) // 2], "json": b"{}"}, DECODE_ERROR),
        ("flac_damaged_inside", {"flac": damaged_inside(second), "json": b"{}"}, DECODE_ERROR),
        ("flac_no_samples", {"flac": no_samples(), "json": b"{}"}, EMPTY_AUDIO),
        # Issue 21: inputs that escaped the rules (RecursionError, ValueError, OverflowError, a
        # rate no resampler builds a filter for), and keys that point outside the tar's folder.
        ("json_nested", {"flac": tone, "json": b"[" * 50_000 + b"]" * 50_000}, BAD_JSON),
        ("json_long_int", {"flac": tone, "json": b'{"duration": ' + b"1" * 5000 + b"}"}, BAD_JSON),
        ("duration_huge", {"flac": tone, "json": meta(duration=10**400)}, BAD_JSON),
        ("rate_too_high", {"flac": wav_at(2**31 - 1), "json": b"{}"}, BAD_SAMPLE_RATE),
        ("too_long", {"flac": silence_flac(700.0), "json": b"{}"}, TOO_LONG),  # data.max_seconds=600
        ("../escape", {"flac": tone, "json": b"{}"}, BAD_KEY),
        ("/abs/key", {"flac": tone, "json": b"{}"}, BAD_KEY),
    ]
    return valid, bad


def token_rule_cases() -> tuple[list, list]:
    """``(key, members, frames)`` of valid edge cases, and ``(key, members, reason)`` of samples
    that break one rule each."""
    extremes = np.array([[0], [CODEBOOK - 1], [0], [CODEBOOK - 1]], dtype=np.int16)
    full_meta = meta(text="t", frames=10, frame_rate=50.0, duration=0.2)
    valid = [
        ("plain", {"codes.npy": npy(codes_of(10)), "json": full_meta}, 10),
        ("no_fields", {"codes.npy": npy(codes_of(30)), "json": b"{}"}, 30),  # bucketed by the .npy header
        ("extremes", {"codes.npy": npy(extremes), "json": meta(frames=1)}, 1),
    ]
    out_of_range = codes_of(10)
    out_of_range[2, 5] = CODEBOOK
    negative = codes_of(10)
    negative[0, 0] = -1

    def planted(code: int) -> np.ndarray:
        codes = codes_of(10)
        codes[1, 3] = code
        return codes
    bad = [
        ("no_codes", {"json": meta(frames=10)}, MISSING_MEMBER),
        ("no_json", {"codes.npy": npy(codes_of(10))}, MISSING_MEMBER),
        ("frames_string", {"codes.npy": npy(codes_of(10)), "json": meta(frames="10")}, BAD_JSON),
        ("not_npy", {"codes.npy": b"not an npy file", "json": b"{}"}, DECODE_ERROR),
        ("codes_int32", {"codes.npy": npy(codes_of(10, dtype=np.int32)), "json": b"{}"}, DECODE_ERROR),
        ("codes_float", {"codes.npy": npy(codes_of(10, dtype=np.float32)), "json": b"{}"}, DECODE_ERROR),
        ("codes_1d", {"codes.npy": npy(codes_of(10)[0]), "json": b"{}"}, DECODE_ERROR),
        ("wrong_n_q", {"codes.npy": npy(codes_of(10, n_q=N_Q - 1)), "json": b"{}"}, DECODE_ERROR),
        ("code_too_big", {"codes.npy": npy(out_of_range), "json": b"{}"}, DECODE_ERROR),
        ("code_negative", {"codes.npy": npy(negative), "json": b"{}"}, DECODE_ERROR),
        ("no_frames", {"codes.npy": npy(codes_of(0)), "json": b"{}"}, EMPTY_CODES),
        ("code_30000", {"codes.npy": npy(planted(30000)), "json": b"{}"}, DECODE_ERROR),
        ("code_minus_5", {"codes.npy": npy(planted(-5)), "json": b"{}"}, DECODE_ERROR),
        ("shape_lies", {"codes.npy": npy_claiming((N_Q, 2**40)), "json": b"{}"}, DECODE_ERROR),  # 8 TiB
        ("data_cut", {"codes.npy": npy(codes_of(10))[:-2], "json": b"{}"}, DECODE_ERROR),
        ("json_nested", {"codes.npy": npy(codes_of(10)), "json": b'{"a":' * 50_000 + b"0" + b"}" * 50_000}, BAD_JSON),
    ]
    return valid, bad


def write_rule_shard(out, kind: str, cases) -> tuple[dict[str, int], dict[str, str]]:
    """One tar of valid and bad samples in turn (valid ones first and last, cycled, so every bad
    sample sits between two valid ones); returns {valid key: length} and {bad key: reason}, in
    tar order."""
    valid, bad = cases
    samples, lengths = [], {}
    for i in range(len(bad) + 1):
        name, members, length = valid[i % len(valid)]
        samples.append({"__key__": f"{name}_{i}", **members})
        lengths[f"{name}_{i}"] = length
        if i < len(bad):
            samples.append({"__key__": bad[i][0], **bad[i][1]})
    with wds.TarWriter(str(out / "shard-000000.tar")) as writer:
        for sample in samples:
            writer.write(sample)
    entries = [{"name": "shard-000000.tar", "samples": len(samples), "seconds": 1.0}]
    if kind == "audio":
        write_manifest(out, "audio", entries, None)  # mixed source rates
    else:
        write_manifest(out, "tokens", entries, 16000, n_q=N_Q, codebook_size=CODEBOOK, frame_rate=50.0, codec="test")
    return lengths, {key: reason for key, _, reason in bad}


@pytest.fixture(scope="module")
def rule_shards(tmp_path_factory):
    """kind -> (shard directory, {valid key: length}, {bad key: reason})."""
    sets = {}
    for kind, cases in (("audio", audio_rule_cases()), ("tokens", token_rule_cases())):
        out = tmp_path_factory.mktemp(f"rules_{kind}")
        sets[kind] = (out, *write_rule_shard(out, kind, cases))
    return sets


def verifier_report(shards, tmp_path) -> dict:
    """tools.inspect_shards' JSON report on ``shards`` (which must hold problems)."""
    report_path = tmp_path / "report.json"
    assert inspect_shards([str(shards), "--json", str(report_path)]) == 1
    return json.loads(report_path.read_text())


def rule_config(shards, kind: str, batching: str) -> DataConfig:
    """One sample per batch, in file order. Dynamic batching: one bucket of one clip, so a
    batch is still one sample; segments cover whole clips (every frame is decoded)."""
    longest = 2.0 if kind == "audio" else 64 / 50.0
    return config(shards, batch_size=1, shuffle_buffer=0, segment_seconds=2.0, context_frames=64, batching=batching,
                  bucket_width=100.0, max_seconds_per_batch=longest)


@pytest.mark.parametrize("kind", ["audio", "tokens"])
@pytest.mark.parametrize("batching", ["fixed", "dynamic"])
def test_the_loader_skips_what_the_verifier_reports_for_the_same_reason(rule_shards, tmp_path, kind, batching):
    shards, lengths, reasons = rule_shards[kind]
    batches = take(build_loader(rule_config(shards, kind, batching), kind, 0, 1, seed=0), len(lengths))
    # Batch i holds the i-th valid sample and reports the bad one read just before it.
    assert [b["keys"] for b in batches] == [[key] for key in lengths]
    assert [int(b["lengths"][0]) for b in batches] == list(lengths.values())
    assert [b["skipped"] for b in batches] == [{}] + [{reason: 1} for reason in reasons.values()]
    report = verifier_report(shards, tmp_path)
    reported = {p["key"]: reason for reason, problems in report["problems"].items() for p in problems}
    assert reported == reasons and report["usable_samples"] == len(lengths)


def test_damage_outside_the_crop_skips_a_clip_only_in_the_epochs_whose_crop_meets_it(tmp_path):
    """The one rule the loader applies in part: it decodes (and checks) only the crop."""
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as writer:
        writer.write({"__key__": "good", "flac": flac_of(16000), "json": meta(duration=1.0)})
        writer.write({"__key__": "damaged", "flac": damaged_inside(flac_of(16000, seed=1)), "json": meta(duration=1.0)})
    write_manifest(tmp_path, "audio", [{"name": "shard-000000.tar", "samples": 2, "seconds": 2.0}], 16000)
    cfg = config(tmp_path, batch_size=1, shuffle_buffer=0, segment_seconds=0.1)
    batches = take(build_loader(cfg, "audio", 0, 1, seed=0), 30)
    delivered = keys(batches).count("damaged")
    skipped = sum(b["skipped"].get(DECODE_ERROR, 0) for b in batches)
    assert delivered > 0 and skipped > 0
    [problem] = verifier_report(tmp_path, tmp_path)["problems"][DECODE_ERROR]
    assert problem["key"] == "damaged"
