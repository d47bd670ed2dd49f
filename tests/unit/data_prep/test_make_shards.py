import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import webdataset as wds

from aurora.data.manifest import read_manifest, resolve_shards
from data_prep import layouts, make_shards, parallel, segment, synth
from data_prep.layouts import make_key
from data_prep.shard_writer import PROGRESS_NAME, ShardWriter

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
    return {make_key(e["path"]): e
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
    assert make_key("a/b.c/clip.v2.flac") == "a__b_c__clip_v2"
    assert make_key("/abs/x.wav") == "abs__x"


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


def test_text_longer_than_max_text_bytes_is_skipped_and_counted(corpus, tmp_path):
    """What a trainer refuses at start is refused here instead, clip by clip, when asked."""
    texts = {e["path"]: len(e["text"].encode()) for e in map(json.loads, (corpus / "metadata.jsonl").read_text()
                                                              .splitlines()[:NUM_CLIPS + 1])}
    limit = sorted(texts.values())[len(texts) // 2]
    make_shards.main(["--manifest", str(corpus / "metadata.jsonl"), "--out", str(tmp_path), "--max-text-bytes",
                      str(limit)])
    long = [s for s in skipped_of(tmp_path) if s["reason"] == "long_text"]
    assert sorted(s["path"] for s in long) == sorted(path for path, n in texts.items() if n > limit)
    assert f"longer than --max-text-bytes {limit}" in long[0]["error"]
    manifest = read_manifest(tmp_path)
    assert manifest["skipped_by_reason"]["long_text"] == len(long) > 0
    assert manifest["text_bytes_max"] == max(n for n in texts.values() if n <= limit)


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


# -- real corpus layouts, audio policy, segmenting, shard size, workers, resume ----------------------

RATE = 16000


def tone(seconds, rate=RATE, freq=440.0, channels=1, amp=0.4):
    t = np.arange(round(seconds * rate)) / rate
    wave = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([wave * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else wave


def noise_with_gaps(seconds, gaps, rate=RATE, seed=0):
    """White noise with digital silence over each (start, end) of ``gaps`` (seconds)."""
    audio = np.clip(np.random.default_rng(seed).normal(0, 0.15, round(seconds * rate)), -1, 1)
    for start, end in gaps:
        audio[round(start * rate): round(end * rate)] = 0.0
    return audio


def run(*argv):
    make_shards.main([str(a) for a in argv])


def samples_of(shard_dir):
    """{key: (json dict, audio [frames, channels], rate)} of a shard set, in shard order."""
    out = {}
    for sample in read_all(shard_dir):
        audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32", always_2d=True)
        out[sample["__key__"]] = (json.loads(sample["json"]), audio, rate)
    return out


def skipped_of(shard_dir):
    return [json.loads(line) for line in (shard_dir / "skipped.jsonl").read_text().splitlines()]


def expect_usage_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        run(*argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    for fragment in fragments:
        assert fragment in err


def test_jsonl_layout_caption_span_and_extra_fields(tmp_path):
    corpus = tmp_path / "mycorpus"
    (corpus / "audio").mkdir(parents=True)
    long = noise_with_gaps(3.0, [])
    sf.write(corpus / "audio" / "long.wav", long, RATE, subtype="PCM_16")
    sf.write(corpus / "audio" / "short.flac", tone(0.5), RATE, subtype="PCM_16")
    rows = [{"path": "audio/long.wav", "caption": "noise", "speaker": "spk1", "language": "en", "start": 0.5,
             "end": 1.25, "mood": "calm"},
            {"path": "audio/long.wav", "text": "the end", "start": 2.0},
            {"path": "audio/short.flac", "text": "a tone", "source": "lab", "duration": 99}]
    (corpus / "list.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run("--input", corpus / "list.json", "--out", tmp_path / "shards")
    got = samples_of(tmp_path / "shards")
    assert list(got) == ["audio__long_500ms-1250ms", "audio__long_2000ms-end", "audio__short"]
    meta, audio, rate = got["audio__long_500ms-1250ms"]
    assert meta["text"] == "noise" and "caption" not in meta
    assert (meta["speaker"], meta["language"], meta["mood"]) == ("spk1", "en", "calm")
    assert (meta["start"], meta["end"], meta["path"]) == (0.5, 1.25, "audio/long.wav")
    assert meta["source"] == meta["corpus"] == "mycorpus" and meta["channels"] == 1
    source = sf.read(corpus / "audio" / "long.wav", dtype="float32")[0]
    np.testing.assert_array_equal(audio[:, 0], source[8000:20000])
    meta, audio, _ = got["audio__long_2000ms-end"]
    assert (meta["start"], meta["end"], meta["duration"]) == (2.0, 3.0, 1.0) and meta["text"] == "the end"
    meta, _, _ = got["audio__short"]
    assert meta["source"] == "lab" and meta["duration"] == 0.5 and "start" not in meta


def test_ljspeech_layout_with_resampling(tmp_path):
    corpus = tmp_path / "LJSpeech-1.1"
    (corpus / "wavs").mkdir(parents=True)
    lines = ['LJ001-0001|Printing, in the only sense "with which" we are at present concerned|Printing, in the '
             'only sense "with which" we are at present concerned',
             "LJ001-0002|Dr. Smith paid $5.|Doctor Smith paid five dollars.",
             "LJ001-0003|missing wav|missing wav"]
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    for name, seconds in (("LJ001-0001", 0.7), ("LJ001-0002", 1.3)):
        sf.write(corpus / "wavs" / f"{name}.wav", tone(seconds, 22050), 22050, subtype="PCM_16")
    run("--input", corpus, "--out", tmp_path / "shards", "--sample-rate", RATE)
    got = samples_of(tmp_path / "shards")
    assert list(got) == ["LJ001-0001", "LJ001-0002"]
    meta, audio, rate = got["LJ001-0002"]
    assert meta["text"] == "Doctor Smith paid five dollars." and meta["raw_text"] == "Dr. Smith paid $5."
    assert meta["path"] == "wavs/LJ001-0002.wav" and meta["corpus"] == "LJSpeech-1.1"
    assert rate == meta["sample_rate"] == RATE and len(audio) == meta["duration"] * RATE
    assert meta["duration"] == pytest.approx(1.3, abs=1 / RATE)
    assert got["LJ001-0001"][0]["text"].startswith('Printing, in the only sense "with which"')
    manifest = read_manifest(tmp_path / "shards")
    assert manifest["sample_rate"] == RATE and manifest["layout"] == "ljspeech"
    assert manifest["skipped_by_reason"] == {"missing_file": 1}
    assert skipped_of(tmp_path / "shards")[0]["line"] == 3


def test_libritts_layout(tmp_path):
    corpus = tmp_path / "train-clean-100"
    for speaker, chapter, utt in (("84", "121123", 1), ("84", "121123", 2), ("103", "1240", 5)):
        folder = corpus / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        uid = f"{speaker}_{chapter}_000000_00000{utt}"
        sf.write(folder / f"{uid}.wav", tone(0.4 + 0.1 * utt, 24000), 24000, subtype="PCM_16")
        (folder / f"{uid}.normalized.txt").write_text(f"Normalized text {utt}.\n")
        (folder / f"{uid}.original.txt").write_text(f"Original text #{utt}\n")
    (corpus / "84" / "121123" / "84_121123.trans.tsv").write_text("not audio\n")
    sf.write(corpus / "103" / "1240" / "103_1240_000000_000009.wav", tone(0.5, 24000), 24000)  # no transcript
    assert layouts.detect(corpus) == "libritts"
    run("--input", corpus, "--out", tmp_path / "shards")
    got = samples_of(tmp_path / "shards")
    assert list(got) == ["103_1240_000000_000005", "84_121123_000000_000001", "84_121123_000000_000002"]
    meta = got["84_121123_000000_000002"][0]
    assert (meta["text"], meta["raw_text"]) == ("Normalized text 2.", "Original text #2")
    assert (meta["speaker"], meta["chapter"], meta["sample_rate"]) == ("84", "121123", 24000)
    assert meta["path"] == "84/121123/84_121123_000000_000002.wav"
    assert got["103_1240_000000_000005"][0]["speaker"] == "103"
    [skip] = skipped_of(tmp_path / "shards")
    assert skip["reason"] == "missing_text" and skip["path"] == "103/1240/103_1240_000000_000009.wav"


def test_plain_folder_of_mixed_formats_and_a_corrupt_file(tmp_path):
    corpus = tmp_path / "field"
    (corpus / "b" / "deep").mkdir(parents=True)
    (corpus / ".hidden").mkdir()
    sf.write(corpus / "a.flac", tone(0.5), RATE, subtype="PCM_16")
    sf.write(corpus / "b" / "c.WAV", tone(0.5), RATE, subtype="PCM_16")
    sf.write(corpus / "b" / "deep" / "d.ogg", tone(0.5), RATE, format="OGG", subtype="VORBIS")
    sf.write(corpus / "b" / "deep" / "e.mp3", tone(0.5), RATE, format="MP3")
    sf.write(corpus / ".hidden" / "x.wav", tone(0.5), RATE)
    (corpus / "notes.txt").write_text("not audio")
    (corpus / "b" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    (corpus / "b" / "deep" / "loop").symlink_to(corpus / "b")  # walked once, not forever
    (corpus / "z_link").symlink_to(corpus / "b" / "deep")
    assert layouts.detect(corpus) == "folder"
    run("--input", corpus, "--out", tmp_path / "shards")
    got = samples_of(tmp_path / "shards")
    assert list(got) == ["a", "b__c", "b__deep__d", "b__deep__e"]
    for key, (meta, audio, rate) in got.items():
        assert meta["text"] == "" and meta["source"] == meta["corpus"] == "field" and rate == RATE
        assert meta["duration"] == pytest.approx(0.5, abs=0.06)  # mp3 adds encoder padding
    assert got["b__deep__e"][0]["path"] == "b/deep/e.mp3"
    [skip] = skipped_of(tmp_path / "shards")
    assert skip["reason"] == "decode_error" and skip["path"] == "b/broken.wav"
    assert "cannot decode audio" in skip["error"] and "broken.wav" in skip["error"]
    manifest = read_manifest(tmp_path / "shards")
    assert manifest["skipped"] == 1 and manifest["skipped_by_reason"] == {"decode_error": 1}
    assert manifest["clips"] == manifest["num_samples"] == 4 and manifest["layout"] == "folder"


def test_layout_detection(tmp_path, corpus):
    assert layouts.detect(corpus / "metadata.jsonl") == "jsonl"
    assert layouts.detect(corpus) == "jsonl"  # a directory holding metadata.jsonl
    lj = tmp_path / "lj"
    (lj / "wavs").mkdir(parents=True)
    (lj / "metadata.csv").write_text("")
    assert layouts.detect(lj) == "ljspeech"
    assert layouts.detect(tmp_path / "lj" / "wavs") == "folder"
    array = tmp_path / "list.json"  # a .json file may also be one JSON array
    array.write_text(json.dumps([{"path": "a.wav", "text": "x"}, {"path": "b.wav"}, {"text": "no path"}], indent=1))
    read = layouts.read_corpus(array)
    assert read.layout == "jsonl" and [e.get("key") for e in read.entries] == ["a", "b", None]
    assert read.entries[2]["reason"] == "bad_entry" and read.entries[2]["line"] == 3


def test_channel_policy(tmp_path):
    corpus = tmp_path / "ch"
    corpus.mkdir()
    stereo = tone(0.5, channels=2)
    sf.write(corpus / "stereo.wav", stereo, RATE, subtype="FLOAT")
    sf.write(corpus / "mono.flac", tone(0.5), RATE, subtype="PCM_16")
    run("--input", corpus, "--out", tmp_path / "mono")
    run("--input", corpus, "--out", tmp_path / "stereo", "--channels", "2")
    mono, two = samples_of(tmp_path / "mono"), samples_of(tmp_path / "stereo")
    meta, audio, _ = mono["stereo"]
    assert audio.shape[1] == 1 and meta["channels"] == 1
    np.testing.assert_allclose(audio[:, 0], stereo.mean(axis=1), atol=1e-6)  # 24-bit: FLOAT is high-res
    assert sf.info(io.BytesIO(read_all(tmp_path / "mono")[1]["flac"])).subtype == "PCM_24"
    meta, audio, _ = two["stereo"]
    assert audio.shape[1] == 2 and meta["channels"] == 2
    np.testing.assert_allclose(audio, stereo, atol=1e-6)
    meta, audio, _ = two["mono"]
    assert audio.shape[1] == 2 and meta["channels"] == 2
    np.testing.assert_array_equal(audio[:, 0], audio[:, 1])
    np.testing.assert_array_equal(audio[:, 0], mono["mono"][1][:, 0])


GAPS = [(8.7, 9.3), (17.7, 18.3)]


def long_corpus(root):
    """A 25 s noise recording with silent gaps near 9 s and 18 s, short clips at other rates and
    channel counts, a too-short clip and a corrupt file."""
    root.mkdir()
    sf.write(root / "a_long.wav", noise_with_gaps(25.0, GAPS), RATE, subtype="PCM_16")
    sf.write(root / "b_stereo.wav", tone(1.5, 44100, channels=2), 44100, subtype="PCM_16")
    sf.write(root / "c_tone.flac", tone(2.0, 22050, freq=330), 22050, subtype="PCM_16")
    sf.write(root / "d_tiny.wav", tone(0.05), RATE, subtype="PCM_16")
    (root / "e_corrupt.flac").write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(range(256)))
    for i in range(4):
        sf.write(root / f"f_noise{i}.wav", noise_with_gaps(1.0 + 0.5 * i, [], seed=i + 1), RATE, subtype="PCM_16")
    return root


LONG_ARGS = ("--sample-rate", RATE, "--max-seconds", 10, "--min-seconds", 0.5, "--shard-mb", 0.3)


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    """The long corpus sharded in one uninterrupted run with --workers 1."""
    root = tmp_path_factory.mktemp("long")
    corpus = long_corpus(root / "corpus")
    run("--input", corpus, "--out", root / "shards", *LONG_ARGS, "--workers", 1)
    return corpus, root / "shards"


def test_long_recording_is_cut_in_its_silent_gaps(long_reference):
    corpus, shards = long_reference
    got = samples_of(shards)
    pieces = [got[f"a_long_seg{n:03d}"] for n in range(3)]
    assert "a_long" not in got
    source = sf.read(corpus / "a_long.wav", dtype="float32")[0]
    ends = []
    for number, (meta, audio, rate) in enumerate(pieces):
        assert meta["segment"] == number and meta["path"] == "a_long.wav" and rate == RATE
        assert meta["duration"] == pytest.approx(meta["end"] - meta["start"]) and meta["duration"] <= 10
        np.testing.assert_array_equal(audio[:, 0], source[round(meta["start"] * RATE): round(meta["end"] * RATE)])
        ends.append(meta["end"])
    assert pieces[0][0]["start"] == 0 and pieces[2][0]["end"] == 25.0
    assert [pieces[1][0]["start"], pieces[2][0]["start"]] == ends[:2]
    for cut, (gap_start, gap_end) in zip(ends, GAPS):
        assert gap_start < cut < gap_end  # in the gap ...
        assert cut == pytest.approx((gap_start + gap_end) / 2, abs=0.02)  # ... at its centre


def test_quietest_point_without_silence_is_the_quietest_instant():
    audio = np.ones((10 * RATE, 1), dtype=np.float32) * 0.5
    audio[round(7.3 * RATE): round(7.32 * RATE)] = 0.1  # a short dip
    cut = segment.quietest_point(audio, RATE, 5 * RATE, 10 * RATE)
    assert 7.29 * RATE <= cut <= 7.33 * RATE


def test_resampled_and_stereo_clips_in_the_long_corpus(long_reference):
    corpus, shards = long_reference
    got = samples_of(shards)
    meta, audio, rate = got["b_stereo"]
    assert rate == RATE and audio.shape[1] == 1 and meta["duration"] == pytest.approx(1.5, abs=1 / RATE)
    source, source_rate = sf.read(corpus / "b_stereo.wav", dtype="float32")
    expected = AF.resample(torch.from_numpy(source.mean(axis=1)), source_rate, RATE).numpy()
    np.testing.assert_allclose(audio[:, 0], expected, atol=1e-4)
    assert got["c_tone"][0]["duration"] == pytest.approx(2.0, abs=1 / RATE)


def test_too_short_and_too_long_are_dropped_and_counted(long_reference, tmp_path):
    corpus, shards = long_reference
    skipped = skipped_of(shards)
    assert [(s["path"], s["reason"]) for s in skipped] == [("d_tiny.wav", "too_short"), ("e_corrupt.flac", "decode_error")]
    assert read_manifest(shards)["skipped_by_reason"] == {"decode_error": 1, "too_short": 1}
    # A piece left shorter than --min-seconds after cutting is dropped too; --too-long drop drops it whole.
    run("--input", corpus, "--out", tmp_path / "min8", "--max-seconds", 10, "--min-seconds", 8)
    assert [k for k in samples_of(tmp_path / "min8") if k.startswith("a_long")] == ["a_long_seg000", "a_long_seg001"]
    piece = [s for s in skipped_of(tmp_path / "min8") if s["path"] == "a_long.wav"]
    assert piece == [{"path": "a_long.wav", "reason": "too_short", "segment": 2, "start": 18.0, "end": 25.0,
                      "error": piece[0]["error"]}]
    run("--input", corpus, "--out", tmp_path / "drop", "--max-seconds", 10, "--too-long", "drop")
    manifest = read_manifest(tmp_path / "drop")
    assert manifest["skipped_by_reason"] == {"decode_error": 1, "too_long": 1, "too_short": 1}
    assert not [k for k in samples_of(tmp_path / "drop") if k.startswith("a_long")]


def test_shard_mb_bounds_the_tar_size(tmp_path):
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(12):
        sf.write(corpus / f"n{i:02d}.wav", noise_with_gaps(0.3 + 0.05 * i, [], seed=i), RATE, subtype="PCM_16")
    run("--input", corpus, "--out", tmp_path / "shards", "--shard-mb", 0.05)
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    sizes = [tar.stat().st_size for tar in tars]
    biggest = max(len(s["flac"]) for s in read_all(tmp_path / "shards")) + 2048  # a sample's members + headers
    assert len(tars) >= 4 and sum(s["samples"] for s in read_manifest(tmp_path / "shards")["shards"]) == 12
    assert all(size <= 50_000 for size in sizes)
    assert all(size > 50_000 - biggest - 10240 for size in sizes[:-1])  # closed only when the next did not fit


def test_workers_do_not_change_the_bytes(long_reference, tmp_path):
    corpus, shards = long_reference
    run("--input", corpus, "--out", tmp_path, *LONG_ARGS, "--workers", 2)
    tars = sorted(shards.glob("*.tar"))
    assert len(tars) >= 4 and [t.name for t in sorted(tmp_path.glob("*.tar"))] == [t.name for t in tars]
    for tar in tars:
        assert (tmp_path / tar.name).read_bytes() == tar.read_bytes()
    assert (tmp_path / "skipped.jsonl").read_bytes() == (shards / "skipped.jsonl").read_bytes()
    assert not (tmp_path / PROGRESS_NAME).exists() and not list(tmp_path.glob("*.tmp"))


def test_a_worker_that_dies_costs_only_its_file(tmp_path, monkeypatch):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(5):
        sf.write(corpus / f"t{i}.wav", tone(0.3 + 0.1 * i), RATE, subtype="PCM_16")
    monkeypatch.setenv(parallel.FAULT_ENV, "1")  # the worker handling t1.wav dies, every time
    run("--input", corpus, "--out", tmp_path / "s", "--workers", 2)
    assert list(samples_of(tmp_path / "s")) == ["t0", "t2", "t3", "t4"]
    [skip] = skipped_of(tmp_path / "s")
    assert skip["reason"] == "worker_crash" and skip["path"] == "t1.wav"


class Crash(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_shards(long_reference, tmp_path, monkeypatch, capsys):
    corpus, reference = long_reference
    out = tmp_path / "shards"
    add = ShardWriter.add

    def crash_in_second_shard(self, sample, entry, number):
        if len(self.totals.shards) == 1 and self._current is not None:
            raise Crash("killed")
        add(self, sample, entry, number)

    monkeypatch.setattr(ShardWriter, "add", crash_in_second_shard)
    with pytest.raises(Crash):
        run("--input", corpus, "--out", out, *LONG_ARGS)
    monkeypatch.undo()
    assert [p.name for p in sorted(out.glob("shard-*"))] == ["shard-000000.tar", "shard-000001.tar.tmp"]
    progress = json.loads((out / PROGRESS_NAME).read_text())
    assert progress["next"] == {"entry": 0, "sample": 1}  # inside the long recording: seg001 is next

    expect_usage_error(capsys, ["--input", corpus, "--out", out, *LONG_ARGS[:-1], 0.5], "holds an interrupted run",
                       "shard_mb 0.3 (now 0.5)")
    run("--input", corpus, "--out", out, *LONG_ARGS, "--workers", 2)  # workers are not part of the fingerprint
    assert "resuming" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for path in reference.iterdir():
        if path.name != "manifest.json":
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    done, expected = read_manifest(out), read_manifest(reference)
    for key in ("shards", "num_samples", "hours", "clips", "skipped", "skipped_by_reason", "sample_rate"):
        assert done[key] == expected[key]
    expect_usage_error(capsys, ["--input", corpus, "--out", out, *LONG_ARGS], "already holds shards",
                       "delete it or choose a new directory")


def test_changed_input_is_refused_on_resume(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        sf.write(corpus / f"t{i}.wav", tone(0.5), RATE, subtype="PCM_16")
    monkeypatch.setattr(ShardWriter, "add", lambda *a: (_ for _ in ()).throw(Crash("killed")))
    with pytest.raises(Crash):
        run("--input", corpus, "--out", tmp_path / "s")
    monkeypatch.undo()
    sf.write(corpus / "t9.wav", tone(0.5), RATE, subtype="PCM_16")
    expect_usage_error(capsys, ["--input", corpus, "--out", tmp_path / "s"], "another input listing")


@pytest.mark.parametrize("argv, message", [
    ([], "the corpus is required"),
    (["--input", "{c}", "--manifest", "{c}/metadata.jsonl"], "give the corpus once"),
    (["--input", "{c}/nope"], "does not exist"),
    (["--input", "{c}", "--channels", "3"], "invalid choice"),
    (["--input", "{c}", "--min-seconds", "5", "--max-seconds", "2"], "must be less than --max-seconds"),
    (["--input", "{c}", "--max-seconds", "0"], "--max-seconds must be > 0"),
    (["--input", "{c}", "--shard-mb", "0"], "--shard-mb must be > 0"),
    (["--input", "{c}", "--workers", "0"], "--workers must be at least 1"),
    (["--input", "{c}", "--samples-per-shard", "0"], "--samples-per-shard must be at least 1"),
    (["--input", "{c}", "--sample-rate", "-1"], "--sample-rate must be a positive"),
    (["--input", "{c}/clips", "--layout", "ljspeech"], "is not an LJSpeech folder"),
    (["--input", "{empty}"], "holds no audio files; layouts understood"),
    (["--input", "{c}/clips/000000.flac"], "not a .jsonl/.json manifest; layouts understood"),
])
def test_bad_arguments_are_usage_errors(corpus, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(c=corpus, empty=tmp_path / "empty") for a in argv]
    expect_usage_error(capsys, [*argv, "--out", tmp_path / "shards"], message)
    assert not list((tmp_path / "shards").glob("*.tar"))


def test_listing_lines_that_break_the_json_parser_are_bad_entries(tmp_path):
    """Issue 21: nesting 50,000 deep (RecursionError), 5,000 digits (ValueError) and a span that
    overflows a float were tracebacks; each is its line's bad_entry, and the job goes on."""
    sf.write(tmp_path / "a.wav", tone(0.5), RATE)
    lines = [b'{"path": "a.wav", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
             b'{"path": "a.wav", "start": ' + b"1" * 5000 + b"}",
             b'{"path": "a.wav", "start": 1e308}',
             b'{"path": "a.wav", "end": ' + b"1" + b"0" * 400 + b"}",
             b'{"path": "a.wav", "text": "kept"}']
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run("--manifest", tmp_path / "metadata.jsonl", "--out", tmp_path / "shards")
    assert [(s["line"], s["reason"]) for s in skipped_of(tmp_path / "shards")] == [(n, "bad_entry") for n in (1, 2, 3, 4)]
    assert [m["text"] for m, _, _ in samples_of(tmp_path / "shards").values()] == ["kept"]
