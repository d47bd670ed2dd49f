"""A procedural demo corpus: synthetic clips with captions that describe them.

    python -m data_prep.synth --out DIR --num-clips N [--seed S] [--sample-rate 16000]
                              [--min-seconds 1.0 --max-seconds 3.0]

Writes ``DIR/clips/NNNNNN.flac`` (16-bit FLAC) and ``DIR/metadata.jsonl``: one JSON object a
line with ``path`` (relative to DIR), ``text``, ``duration``, ``sample_rate``, ``source``
("synth") and the generator parameters. Clip i depends only on (seed, i): the same seed gives
byte-identical files.

Five kinds of clip: tones, chords, chirps (up/down sweeps), noise bursts (white/pink/brown)
and percussive hits, e.g. "a bright sawtooth chord in A minor, swelling, mid pitch".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
PITCH_RANGES = {"low": (36, 52), "mid": (53, 71), "high": (72, 88)}
"""MIDI note ranges (inclusive) of the pitch words: C2-E3, F3-B4, C5-E6."""
TIMBRES = ("sine", "square", "sawtooth", "triangle")
BRIGHTNESS_TILT = {"bright": 0.0, "dark": 1.5}
"""Extra harmonic roll-off: harmonic k is scaled by k ** -tilt."""
ENVELOPES = ("plucked", "sustained", "swelling", "fading")
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
"""Power spectrum slope: power ~ 1 / f ** exponent."""
CHORDS = {"major": (0, 4, 7), "minor": (0, 3, 7)}
KINDS = ("tone", "chord", "chirp", "noise", "hits")
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
MAX_HARMONICS = 16


# -- pitch ------------------------------------------------------------------------------------
def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def note_name(midi: int) -> str:
    """Scientific pitch notation: 69 -> "A4"."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def pitch_word(midi: int) -> str:
    return next(word for word, (lo, hi) in PITCH_RANGES.items() if lo <= midi <= hi)


# -- signal building blocks (numpy, float64) ----------------------------------------------------
def harmonic_amplitudes(timbre: str, brightness: str | None, count: int) -> np.ndarray:
    """Amplitudes of harmonics 1..count; the fundamental is always the strongest."""
    k = np.arange(1, count + 1, dtype=np.float64)
    odd = k % 2 == 1
    amps = {
        "sine": (k == 1).astype(np.float64),
        "square": np.where(odd, 1.0 / k, 0.0),
        "sawtooth": 1.0 / k,
        "triangle": np.where(odd, np.where(k % 4 == 1, 1.0, -1.0) / k**2, 0.0),
    }[timbre]
    return amps * k ** -BRIGHTNESS_TILT.get(brightness, 0.0)


def oscillator(phase: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of ``amps[k-1] * sin(k * phase)``: a band-limited periodic wave."""
    k = np.flatnonzero(amps) + 1
    return np.sin(np.outer(phase, k)) @ amps[k - 1]


def harmonic_count(max_hz: float, sample_rate: int) -> int:
    """Harmonics that stay below 0.45 x the sample rate (no aliasing), at most MAX_HARMONICS."""
    return max(1, min(MAX_HARMONICS, int(0.45 * sample_rate / max_hz)))


def envelope(kind: str, n: int, sample_rate: int) -> np.ndarray:
    """Amplitude envelope in [0, 1] of ``n`` samples."""
    t = np.arange(n) / sample_rate
    edge = max(1, min(n // 4, int(0.01 * sample_rate)))  # 10 ms attack/release, shorter for tiny clips
    attack = np.minimum(1.0, np.arange(n) / edge)
    release = np.minimum(1.0, np.arange(n)[::-1] / edge)
    duration = n / sample_rate
    shape = {
        "plucked": np.exp(-t / (duration / 5)),
        "sustained": np.ones(n),
        "swelling": (t / duration) ** 2,
        "fading": 1.0 - t / duration,
    }[kind]
    return attack * release * shape


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as 1 / f ** exponent, peak-normalised."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = 1.0 / n  # the lowest non-zero frequency stands in for DC
    noise = np.fft.irfft(spectrum * f ** (-exponent / 2), n)
    return noise / max(np.abs(noise).max(), 1e-12)


def tone_phase(start_hz: float, end_hz: float, n: int, sample_rate: int) -> np.ndarray:
    """Phase of a constant tone, or of an exponential sweep from start_hz to end_hz."""
    hz = start_hz * (end_hz / start_hz) ** (np.arange(n) / max(n - 1, 1))
    return 2 * np.pi * np.cumsum(hz) / sample_rate


def hits(params: dict, n: int, sample_rate: int) -> np.ndarray:
    """``count`` decaying noise or sine hits, one every 60 / bpm seconds."""
    out = np.zeros(n)
    length = min(n, int(0.25 * sample_rate))
    t = np.arange(length) / sample_rate
    decay = np.exp(-t / params["decay"])
    if params["hit"] == "sine":
        hit = np.sin(2 * np.pi * params["frequency"] * t) * decay
    else:
        hit = colored_noise(length, 0.0, np.random.default_rng(params["noise_seed"])) * decay
    for i in range(params["count"]):
        start = int(round(i * 60.0 / params["bpm"] * sample_rate))
        end = min(n, start + length)
        out[start:end] += hit[: end - start]
    return out


def render(params: dict, n: int, sample_rate: int) -> np.ndarray:
    """The clip described by ``params``: ``n`` float64 samples, peak = ``params["gain"]``."""
    kind = params["kind"]
    if kind == "noise":
        rng = np.random.default_rng(params["noise_seed"])
        signal = colored_noise(n, NOISE_EXPONENTS[params["color"]], rng)
    elif kind == "hits":
        signal = hits(params, n, sample_rate)
    else:
        if kind == "chirp":
            sweeps = [(params["start_frequency"], params["end_frequency"])]
        else:
            sweeps = [(hz, hz) for hz in params["frequencies"]]
        top = max(max(pair) for pair in sweeps)
        amps = harmonic_amplitudes(params["timbre"], params.get("brightness"), harmonic_count(top, sample_rate))
        signal = sum(oscillator(tone_phase(a, b, n, sample_rate), amps) for a, b in sweeps)
    if "envelope" in params:
        signal = signal * envelope(params["envelope"], n, sample_rate)
    return signal * (params["gain"] / max(np.abs(signal).max(), 1e-12))


# -- random parameters and captions --------------------------------------------------------------
def _timbre(rng: np.random.Generator) -> dict:
    timbre = str(rng.choice(TIMBRES))
    params = {"timbre": timbre, "envelope": str(rng.choice(ENVELOPES))}
    if timbre != "sine":
        params["brightness"] = str(rng.choice(list(BRIGHTNESS_TILT)))
    return params


def random_params(kind: str, rng: np.random.Generator, duration: float) -> dict:
    """Random generator parameters for one clip of ``kind``."""
    params: dict = {"kind": kind, "gain": round(float(rng.uniform(0.3, 0.9)), 3)}
    if kind in ("tone", "chord"):
        lo, hi = PITCH_RANGES[str(rng.choice(list(PITCH_RANGES)))]
        midi = int(rng.integers(lo, hi + 1))
        params.update(_timbre(rng), note=note_name(midi), midi=midi, pitch=pitch_word(midi))
        if kind == "tone":
            params["frequencies"] = [round(midi_to_hz(midi), 3)]
        else:
            quality = str(rng.choice(list(CHORDS)))
            params.update(quality=quality, frequencies=[round(midi_to_hz(midi + i), 3) for i in CHORDS[quality]])
    elif kind == "chirp":
        low = int(rng.integers(36, 65))
        high = int(rng.integers(low + 12, 89))
        direction = str(rng.choice(["up", "down"]))
        start, end = (low, high) if direction == "up" else (high, low)
        params.update(_timbre(rng), direction=direction, start_note=note_name(start), end_note=note_name(end),
                      start_frequency=round(midi_to_hz(start), 3), end_frequency=round(midi_to_hz(end), 3))
    elif kind == "noise":
        params.update(color=str(rng.choice(list(NOISE_EXPONENTS))), envelope=str(rng.choice(ENVELOPES)),
                      noise_seed=int(rng.integers(2**31)))
    elif kind == "hits":
        # The hits spread over the whole clip: the tempo follows from their count (at most 4 a second).
        most = int(np.clip(duration * 4, 1, 8))
        count = int(rng.integers(min(2, most), most + 1))
        params.update(hit=str(rng.choice(["noise", "sine"])), count=count, bpm=max(1, int(60 * count / duration)),
                      decay=round(float(rng.uniform(0.02, 0.1)), 3), noise_seed=int(rng.integers(2**31)))
        if params["hit"] == "sine":
            midi = int(rng.integers(36, 60))
            params.update(note=note_name(midi), midi=midi, pitch=pitch_word(midi),
                          frequency=round(midi_to_hz(midi), 3))
    else:
        raise ValueError(f"unknown clip kind {kind!r}; expected one of {KINDS}")
    return params


def caption(params: dict) -> str:
    """A sentence naming the clip's kind, timbre, pitch and envelope."""
    kind = params["kind"]
    if kind == "noise":
        return f"a burst of {params['color']} noise, {params['envelope']}"
    if kind == "hits":
        plural = "s" if params["count"] > 1 else ""
        what = f"{COUNT_WORDS[params['count']]} percussive {params['hit']} hit{plural} at {params['bpm']} bpm"
        return what + (f", {params['pitch']} pitch at {params['note']}" if params["hit"] == "sine" else "")
    color = params.get("brightness", "pure")
    voice = f"a {color} {params['timbre']}"
    if kind == "tone":
        return f"{voice} tone at {params['note']}, {params['envelope']}, {params['pitch']} pitch"
    if kind == "chord":
        root = params["note"].rstrip("0123456789")
        return f"{voice} chord in {root} {params['quality']}, {params['envelope']}, {params['pitch']} pitch"
    return (f"{voice} chirp sweeping {params['direction']} from {params['start_note']} to "
            f"{params['end_note']}, {params['envelope']}")


def make_clip(seed: int, index: int, sample_rate: int, min_seconds: float, max_seconds: float):
    """Clip ``index`` of the corpus for ``seed``: (float64 samples, metadata without ``path``)."""
    rng = np.random.default_rng([seed, index])
    n = max(1, round(rng.uniform(min_seconds, max_seconds) * sample_rate))
    params = random_params(str(rng.choice(KINDS)), rng, n / sample_rate)
    meta = {"text": caption(params), "duration": n / sample_rate, "sample_rate": sample_rate, "source": "synth",
            **params}
    return render(params, n, sample_rate), meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--num-clips", required=True, type=int, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="shortest clip (default 1.0)")
    parser.add_argument("--max-seconds", type=float, default=3.0, help="longest clip (default 3.0)")
    args = parser.parse_args(argv)
    if args.num_clips < 1:
        parser.error(f"--num-clips must be at least 1, got {args.num_clips}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.sample_rate < 8000:
        parser.error(f"--sample-rate must be at least 8000 Hz (the highest notes need it), got {args.sample_rate}")
    if not 0 < args.min_seconds <= args.max_seconds:
        parser.error(f"need 0 < --min-seconds <= --max-seconds, got {args.min_seconds} and {args.max_seconds}")

    (args.out / "clips").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(args.num_clips), desc="synth", unit="clip"):
        signal, meta = make_clip(args.seed, i, args.sample_rate, args.min_seconds, args.max_seconds)
        path = f"clips/{i:06d}.flac"
        sf.write(args.out / path, signal, args.sample_rate, format="FLAC", subtype="PCM_16")
        lines.append(json.dumps({"path": path, **meta}))
    tmp = args.out / "metadata.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out / "metadata.jsonl")
    hours = sum(json.loads(line)["duration"] for line in lines) / 3600
    print(f"wrote {args.num_clips} clips ({hours * 60:.1f} min) and metadata.jsonl to {args.out}")


if __name__ == "__main__":
    main()
