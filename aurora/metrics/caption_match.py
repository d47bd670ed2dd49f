"""How well a clip matches a synthetic-corpus caption: its kind and its pitch, measured from audio.

The synthetic corpus (``data_prep.synth``) keeps each clip's generator parameters in its json:
``kind`` (tone, chord, chirp, noise, hits), the ``frequencies`` of a tone or chord, a chirp's
``start_frequency``/``end_frequency``, a sine hit's ``frequency``. ``classify`` names the kind a
clip sounds like from a few spectral features; ``caption_match`` scores a clip against the
parameters of a caption in [0, 1]: half for the kind, half for the pitch (1 at the caption's
fundamental, falling linearly to 0 an octave away), the kind alone for noise.

The features are hand-written because no library ships a classifier of these five synthetic
kinds; each is one line of signal processing (torch.stft):
- onsets: bursts of the frame energy, separated by dips below a fifth of the peak: >= 2 is hits;
- spectral flatness (geometric over arithmetic mean of the power spectrum, its slope divided
  out): noise is flat;
- the dominant frequency's travel over the clip, in octaves: a chirp sweeps at least half of one;
- strong spectral peaks that are not harmonics of the lowest one: a chord's other notes.
"""

import math

import torch

KINDS = ("tone", "chord", "chirp", "noise", "hits")
N_FFT = 2048
HOP = 256
FLAT_NOISE = 0.15
"""Mean spectral flatness above which a clip without onsets is noise."""
SWEEP_OCTAVES = 0.5
"""Travel of the dominant frequency (first to last fifth of the clip) that makes a chirp."""
PEAK_FLOOR = 0.25
"""A spectral peak counts when it reaches this fraction of the strongest."""
HARMONIC_TOLERANCE = 0.03
"""How close to an integer multiple of the lowest peak a harmonic is (relative)."""
MIN_HZ = 40.0
"""Frequencies below this are never a pitch: the corpus's lowest note is C2 (65.4 Hz), and what
lies under it is DC offset or rumble, which a codec early in training makes plenty of."""


def _spectrogram(audio: torch.Tensor) -> torch.Tensor:
    """Power [frames, bins] of a mono clip [T] (padded to one window if shorter)."""
    audio = audio.float().flatten()
    if audio.numel() < N_FFT:
        audio = torch.nn.functional.pad(audio, (0, N_FFT - audio.numel()))
    spec = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    return spec.abs().square().T


def onsets(power: torch.Tensor) -> int:
    """Bursts of frame energy (smoothed over 3 frames, ~50 ms): rises above half the peak after a
    dip below a fifth of it."""
    energy = torch.nn.functional.avg_pool1d(power.sum(1)[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    energy = energy / energy.max().clamp(min=1e-12)
    count, armed = 0, True
    for value in energy.tolist():
        if armed and value > 0.5:
            count, armed = count + 1, False
        elif value < 0.2:
            armed = True
    return count


def flatness(power: torch.Tensor) -> float:
    """Mean spectral flatness of the frames holding at least a tenth of the peak energy, after
    the clip's overall spectral slope (a power law fitted to its mean spectrum) is divided out,
    so that pink and brown noise are as flat as white."""
    energy = power.sum(1)
    loud = power[energy >= 0.1 * energy.max()][:, 1:] + 1e-12
    log_f = torch.arange(1, loud.shape[1] + 1, dtype=torch.float32).log()
    log_p = loud.mean(0).log()
    slope = ((log_f - log_f.mean()) * (log_p - log_p.mean())).sum() / (log_f - log_f.mean()).square().sum()
    white = loud * (-slope * log_f).exp()
    return (white.log().mean(1).exp() / white.mean(1)).mean().item()


def _lowest_bin(sample_rate: int) -> int:
    return math.ceil(MIN_HZ * N_FFT / sample_rate)


def dominant_hz(power: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """The strongest frequency (from ``MIN_HZ`` up) of each frame, in Hz."""
    lowest = _lowest_bin(sample_rate)
    return power[:, lowest:].argmax(1).float().add(lowest) * sample_rate / N_FFT


def sweep_octaves(power: torch.Tensor, sample_rate: int) -> float:
    """log2 of the median dominant frequency of the clip's last fifth over its first fifth."""
    hz = dominant_hz(power, sample_rate)
    fifth = max(1, len(hz) // 5)
    return math.log2(hz[-fifth:].median().item() / hz[:fifth].median().item())


def spectral_peaks(power: torch.Tensor, sample_rate: int) -> list[float]:
    """Frequencies (Hz, ascending, from ``MIN_HZ`` up) of the local maxima of the mean spectrum
    above PEAK_FLOOR."""
    mean = power.mean(0)
    mean[: _lowest_bin(sample_rate)] = 0
    floor = PEAK_FLOOR * mean.max()
    peaks = [i for i in range(1, len(mean) - 1) if mean[i] >= floor and mean[i] >= mean[i - 1] and mean[i] > mean[i + 1]]
    return [i * sample_rate / N_FFT for i in peaks]


def classify(audio: torch.Tensor, sample_rate: int) -> str:
    """The kind (``KINDS``) the clip sounds like."""
    power = _spectrogram(audio)
    if onsets(power) >= 2:
        return "hits"
    if flatness(power) > FLAT_NOISE:
        return "noise"
    if abs(sweep_octaves(power, sample_rate)) >= SWEEP_OCTAVES:
        return "chirp"
    peaks = spectral_peaks(power, sample_rate)
    if peaks:
        ratios = [hz / peaks[0] for hz in peaks[1:]]
        if any(abs(r - round(r)) > HARMONIC_TOLERANCE * r for r in ratios):
            return "chord"
    return "tone"


def target_hz(params: dict) -> float | None:
    """The fundamental a clip of these parameters has (a chirp's mean), or None (noise, noise hits)."""
    if "frequencies" in params:
        return float(min(params["frequencies"]))
    if "start_frequency" in params:
        return math.sqrt(params["start_frequency"] * params["end_frequency"])
    return params.get("frequency")


def caption_match(audio: torch.Tensor, sample_rate: int, params: dict) -> float:
    """The match in [0, 1] of a clip [T] with the generator parameters of a synthetic caption."""
    kind = 1.0 if classify(audio, sample_rate) == params["kind"] else 0.0
    target = target_hz(params)
    if target is None:
        return kind
    power = _spectrogram(audio)
    if params["kind"] == "chirp":  # a sweep's pitch: its middle
        hz = dominant_hz(power, sample_rate)
        measured = hz[len(hz) // 4: max(len(hz) // 4 + 1, 3 * len(hz) // 4)].median().item()
        target = math.sqrt(params["start_frequency"] * params["end_frequency"])
    else:
        peaks = spectral_peaks(power, sample_rate)
        measured = peaks[0] if peaks else 0.0
    if measured <= 0:
        return 0.5 * kind
    octaves = abs(math.log2(measured / target))
    return 0.5 * kind + 0.5 * max(0.0, 1.0 - octaves)
