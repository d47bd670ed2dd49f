import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import webdataset as wds

from aurora.data.manifest import read_manifest, resolve_shards
from data_prep import make_shards, synth

NUM_CLIPS = 10


def make_corpus(out):
    """10 synth clips, plus a WAV clip, a missing file, an unreadable file and a bad line."""
    synth.main(["--out", str(out), "--num-clips", str(NUM_CLIPS), "--seed", "5",
                "--min-seconds", "0.2", "--max-seconds", "0.5"])
    wav = np.sin(np.arange(4000) * 0.05) * 0.5
    sf.write(out / "clips" / "extra.wav", wav, 16000, subtype="PCM_16")
    (out / "clips" / "broken.flac").write_bytes(b"fLaC this is not a flac stream")
    with open(out / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"path": "clips/extra.wav", "text": "a wav sine", "speaker": "s1"}) + "\n")
        f.write(json.dumps({"path": "clips/missing.flac", "text": "gone"}) + "\n")
        f.write(json.dumps({"path": "clips/broken.flac", "text": "broken"}) + "\n")
        f.write("{not json\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out)
    return out


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    make_shards.main(["--manifest", str(corpus / "metadata.jsonl"), "--out", str(out), "--samples-per-shard", "4"])
    return out


def entries(corpus):
    return {make_shards.make_key(e["path"]): e
            for e in map(json.loads, (corpus / "metadata.jsonl").read_text().splitlines()[:NUM_CLIPS + 1])}


def read_all(shard_dir):
    urls, _ = resolve_shards(str(shard_dir))
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_plain_webdataset_reads_the_shards(corpus, shards):
    samples = read_all(shards)
    expected = entries(corpus)
    assert [s["__key__"] for s in samples] == list(expected)
    for sample in samples:
        assert set(sample) >= {"__key__", "flac", "json"}
        meta = json.loads(sample["json"])
        entry = expected[sample["__key__"]]
        assert meta["text"] == entry["text"] and meta["path"] == entry["path"]
        assert meta["sample_rate"] == 16000
        assert meta["source"] == entry.get("source", corpus.name)
        assert meta["duration"] == pytest.approx(sf.info(corpus / entry["path"]).duration)
        extra = {k: v for k, v in entry.items() if k not in ("path", "text", "duration", "sample_rate", "source")}
        assert {k: meta[k] for k in extra} == extra  # generator parameters / speaker carried over


def test_keys_have_no_dots_and_are_unique():
    assert make_shards.make_key("a/b.c/clip.v2.flac") == "a__b_c__clip_v2"
    assert make_shards.make_key("/abs/x.wav") == "abs__x"


def test_audio_round_trips(corpus, shards):
    for sample in read_all(shards):
        meta = json.loads(sample["json"])
        decoded, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        source, source_rate = sf.read(corpus / meta["path"], dtype="float32")
        assert rate == source_rate
        np.testing.assert_array_equal(decoded, source)


def test_manifest_counts_and_hours(corpus, shards):
    manifest = read_manifest(shards)
    assert manifest["kind"] == "audio" and manifest["sample_rate"] == 16000
    assert [s["name"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 3]
    assert manifest["num_samples"] == NUM_CLIPS + 1
    seconds = sum(sf.info(corpus / e["path"]).duration for e in entries(corpus).values())
    assert manifest["hours"] == pytest.approx(seconds / 3600, abs=1e-6)  # seconds kept to the ms
    assert manifest["skipped"] == 3


def test_bad_inputs_are_skipped_and_listed(shards):
    skipped = [json.loads(line) for line in (shards / "skipped.jsonl").read_text().splitlines()]
    assert [s["path"] for s in skipped] == ["clips/missing.flac", "clips/broken.flac", None]
    assert "file not found" in skipped[0]["error"]
    assert "cannot decode audio" in skipped[1]["error"]
    assert "not valid JSON" in skipped[2]["error"] and skipped[2]["line"] == NUM_CLIPS + 4


def test_same_input_gives_byte_identical_shards(corpus, shards, tmp_path):
    make_shards.main(["--manifest", str(corpus / "metadata.jsonl"), "--out", str(tmp_path), "--samples-per-shard", "4"])
    for tar in sorted(shards.glob("*.tar")):
        assert (tmp_path / tar.name).read_bytes() == tar.read_bytes()


def test_resampling(corpus, tmp_path):
    make_shards.main(["--manifest", str(corpus / "metadata.jsonl"), "--out", str(tmp_path), "--sample-rate", "8000"])
    assert read_manifest(tmp_path)["sample_rate"] == 8000
    for sample in read_all(tmp_path):
        meta = json.loads(sample["json"])
        decoded, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        source, _ = sf.read(corpus / meta["path"], dtype="float32")
        expected = AF.resample(torch.from_numpy(source), 16000, 8000).numpy()
        assert rate == meta["sample_rate"] == 8000
        assert len(decoded) == len(expected) and meta["duration"] == pytest.approx(len(expected) / 8000)
        np.testing.assert_allclose(decoded, expected, atol=1e-4)  # 16-bit quantisation


def test_refuses_to_overwrite_shards(corpus, shards, capsys):
    with pytest.raises(SystemExit):
        make_shards.main(["--manifest", str(corpus / "metadata.jsonl"), "--out", str(shards)])
    assert "already holds shards" in capsys.readouterr().err


def test_no_usable_clip_is_an_error(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "nope.flac"}) + "\n")
    with pytest.raises(SystemExit, match="none of the 1 clips could be read"):
        make_shards.main(["--manifest", str(tmp_path / "metadata.jsonl"), "--out", str(tmp_path / "shards")])
    assert not list((tmp_path / "shards").glob("*.tar"))
