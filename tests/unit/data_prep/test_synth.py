import json
import re

import numpy as np
import pytest
import soundfile as sf

from data_prep import synth


def make_corpus(out, seed=3, num_clips=30, sample_rate=16000, min_seconds=0.5, max_seconds=1.0):
    synth.main(["--out", str(out), "--num-clips", str(num_clips), "--seed", str(seed),
                "--sample-rate", str(sample_rate), "--min-seconds", str(min_seconds),
                "--max-seconds", str(max_seconds)])
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def note_to_hz(note: str) -> float:
    name, octave = re.fullmatch(r"([A-G]#?)(-?\d)", note).groups()
    return synth.midi_to_hz(12 * (int(octave) + 1) + synth.NOTE_NAMES.index(name))


def peak_hz(signal: np.ndarray, sample_rate: int) -> float:
    n_fft = 8 * len(signal)  # zero-padding: a finer frequency grid for the peak
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n_fft))
    return np.fft.rfftfreq(n_fft, 1 / sample_rate)[np.argmax(spectrum)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, make_corpus(out)


def test_same_seed_gives_byte_identical_corpus(corpus, tmp_path):
    out, _ = corpus
    make_corpus(tmp_path)
    assert (tmp_path / "metadata.jsonl").read_bytes() == (out / "metadata.jsonl").read_bytes()
    for path in sorted((out / "clips").iterdir()):
        assert (tmp_path / "clips" / path.name).read_bytes() == path.read_bytes(), path.name


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    out, lines = corpus
    other = make_corpus(tmp_path, seed=4)
    assert [line["text"] for line in other] != [line["text"] for line in lines]


def test_metadata_fields_durations_and_rates(corpus):
    out, lines = corpus
    assert len(lines) == 30
    assert {line["kind"] for line in lines} == set(synth.KINDS)
    for line in lines:
        info = sf.info(out / line["path"])
        assert line["source"] == "synth"
        assert info.samplerate == line["sample_rate"] == 16000
        assert info.format == "FLAC" and info.subtype == "PCM_16"
        assert info.frames / info.samplerate == pytest.approx(line["duration"])
        assert 0.5 <= line["duration"] <= 1.0


def test_captions_mention_the_generator_attributes(corpus):
    _, lines = corpus
    for line in lines:
        text = line["text"]
        words = [line.get(k) for k in ("timbre", "brightness", "envelope", "pitch", "color", "hit",
                                       "direction", "start_note", "end_note", "quality")]
        for word in filter(None, words):
            assert word in text, (word, text)
        if line["kind"] in ("tone", "hits") and "note" in line:
            assert line["note"] in text
        if line["kind"] == "chord":
            assert f"{line['note'].rstrip('0123456789')} {line['quality']}" in text
        if line["kind"] == "hits":
            assert f"{line['bpm']} bpm" in text and synth.COUNT_WORDS[line["count"]] in text


def test_signals_are_finite_and_within_unit_range():
    for index in range(60):
        signal, meta = synth.make_clip(seed=1, index=index, sample_rate=16000, min_seconds=0.05, max_seconds=0.5)
        assert np.isfinite(signal).all(), meta["text"]
        assert np.abs(signal).max() <= 1.0 and np.abs(signal).max() == pytest.approx(meta["gain"])
        assert len(signal) == round(meta["duration"] * 16000)
        if meta["kind"] == "hits":  # spread over the clip
            assert (meta["count"] - 1) * 60 / meta["bpm"] < meta["duration"] <= (meta["count"] + 1) * 60 / meta["bpm"]


@pytest.mark.parametrize("sample_rate", [16000, 24000])
def test_tone_pitch_matches_caption(sample_rate):
    rng = np.random.default_rng(0)
    for _ in range(40):
        params = synth.random_params("tone", rng, duration=1.0)
        note = re.search(r" at ([A-G]#?\d)", synth.caption(params)).group(1)
        signal = synth.render(params, sample_rate, sample_rate)
        expected = note_to_hz(note)
        assert peak_hz(signal, sample_rate) == pytest.approx(expected, rel=0.01), synth.caption(params)


def test_corpus_tones_on_disk_match_their_captions(corpus):
    out, lines = corpus
    tones = [line for line in lines if line["kind"] == "tone"]
    assert tones
    for line in tones:
        audio, rate = sf.read(out / line["path"])
        note = re.search(r" at ([A-G]#?\d)", line["text"]).group(1)
        # 1 s clips: the FFT grid is ~1 Hz, a semitone at C2 is ~4 Hz.
        assert peak_hz(audio, rate) == pytest.approx(note_to_hz(note), rel=0.01), line["text"]


def test_harmonics_stay_below_nyquist_and_fundamental_dominates():
    for timbre in synth.TIMBRES:
        for brightness in (None, "bright", "dark"):
            amps = synth.harmonic_amplitudes(timbre, brightness, 16)
            assert np.argmax(np.abs(amps)) == 0
    assert synth.harmonic_count(1000.0, 16000) * 1000.0 < 8000


def test_bad_arguments_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synth.main(["--out", str(tmp_path), "--num-clips", "2", "--min-seconds", "2", "--max-seconds", "1"])
    assert "--min-seconds <= --max-seconds" in capsys.readouterr().err
