"""Codec quality numbers, with the definitions of the DAC paper (Kumar et al. 2023), so ours read
against its table (DAC 44.1 kHz at 8 kbps: mel distance 0.93, STFT distance 1.60, SI-SDR 10.75 dB).

DAC's evaluation (descript-audio-codec ``scripts/evaluate.py``) compares each original file x with
its reconstruction y through the training config's losses (``conf/final/44khz.yml``, bound by
argbind), from ``dac/nn/loss.py`` on audiotools' ``AudioSignal``:

- **mel distance** (``MelSpectrogramLoss``): per scale, a Hann-windowed STFT with window w in
  (32, 64, 128, 256, 512, 1024, 2048) and hop w / 4, magnitudes through a slaney mel filterbank
  (librosa's ``filters.mel``: slaney mel scale, slaney area normalisation, fmin 0, fmax sr / 2)
  with (5, 10, 20, 40, 80, 160, 320) bands, then ``L1(log10(clamp(mel_x, 1e-5) ** pow), ...)``
  with pow 1.0, averaged over bands and frames; summed over the 7 scales. The config sets
  ``mag_weight: 0.0`` (the linear-magnitude L1 term is off) and keeps ``log_weight`` 1.0; we do
  the same (``MEL_MAG_WEIGHT``).
- **STFT distance** (``MultiScaleSTFTLoss``, defaults; the config only sets its windows): windows
  (2048, 512), hop w / 4, per scale ``L1(log10(clamp(|X|, 1e-5) ** 2), ...) + L1(|X|, |Y|)``,
  summed over the 2 scales.
- **SI-SDR** (``SISDRLoss``: zero mean, scaling=True, eps 1e-8 where DAC puts it), in dB, reported
  positive (evaluate.py negates the loss).

audiotools' STFT (``AudioSignal.stft``, descript-audiotools >= 0.7.2 as DAC requires): window
``scipy.signal.get_window("hann", w)``, the periodic Hann window, equal to ``torch.hann_window(w)``;
``match_stride=False`` so it adds no padding of its own (right_pad = pad = 0), then
``torch.stft(center=True)`` with torch's default ``pad_mode="reflect"``. We call ``torch.stft`` the
same way, so the spectra are the same. Differences, all at the edges of DAC's setting:

- a clip of at most w / 2 samples cannot be reflect-padded (torch raises, and so would DAC); for
  such a clip and scale we zero-pad instead (``pad_mode="constant"``);
- the mel filterbank is librosa's algorithm re-implemented here (float64, cast to float32 as
  librosa returns it), so librosa is not needed; torchaudio's ``melscale_fbanks(norm="slaney",
  mel_scale="slaney")`` is the same filterbank only up to ~1e-4 relative (it works in float32,
  and takes sr // 2 as the top frequency); the tests check ours against librosa when installed;
- audiotools versions before 0.7 defaulted to a sqrt-Hann window; DAC's pinned audiotools uses Hann.

What we average differs from DAC's evaluate.py only in bookkeeping: it scores one file at a time
(10 s excerpts, resampled to 44.1 kHz and to 22.05 kHz), we score every clip of the eval batches
at the codec's own sample rate, on the clip's valid samples (``lengths``), and report the mean over
clips (each clip weighs the same). The spectral distances depend on the sample rate (the windows
are fixed in samples), so they compare with DAC's "44k" column only for a 44.1 kHz codec.

Also reported: the bitrate of the codebooks used (frame_rate * k * log2(codebook_size)), each
codebook's usage over every frame of the eval set (entropy / log2(K), and perplexity 2 ** entropy),
and, for a 16 kHz codec, wideband PESQ (``pesq`` package) and STOI (``pystoi``) when installed.

Everything runs in fp32 (autocast off), under ``torch.no_grad``, with the codec in eval mode, on
whichever device the codec is on; the codes come from ``codec.encode`` and the audio from
``codec.decode``, the token path. A clip is encoded on its own valid samples (clips of one length
share a batch), exactly as ``data_prep.tokenize`` encodes it.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from aurora.models.codec.quantizer import code_counts

if TYPE_CHECKING:
    from aurora.models.codec import Codec, CodecConfig

log = logging.getLogger(__name__)

MEL_N_MELS = (5, 10, 20, 40, 80, 160, 320)
MEL_WINDOW_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_POW = 1.0
MEL_MAG_WEIGHT = 0.0
"""conf/final/44khz.yml: ``MelSpectrogramLoss.mag_weight: 0.0``."""
STFT_WINDOW_LENGTHS = (2048, 512)
STFT_POW = 2.0
STFT_MAG_WEIGHT = 1.0
CLAMP_EPS = 1e-5
SI_SDR_EPS = 1e-8
SPEECH_SAMPLE_RATE = 16000
"""PESQ (wideband) and STOI are computed only for codecs at this rate."""

PREFIX = "eval/"


# -- spectra ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _window(length: int, device: str) -> Tensor:
    return torch.hann_window(length, periodic=True, dtype=torch.float32, device=device)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


_F_SP, _MIN_LOG_HZ = 200.0 / 3, 1000.0
_MIN_LOG_MEL, _LOGSTEP = _MIN_LOG_HZ / _F_SP, math.log(6.4) / 27.0


@functools.lru_cache(maxsize=None)
def _mel_filterbank_np(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) with its defaults (fmin 0, fmax sr / 2, slaney scale,
    slaney norm), computed as librosa does, in float64 then cast to float32: [n_mels, n_fft // 2 + 1].
    (Bands narrower than one FFT bin stay empty, as in librosa.)"""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = np.subtract.outer(mel_hz, fft_hz)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=None)
def mel_filterbank_on(sample_rate: int, n_fft: int, n_mels: int, device: str) -> Tensor:
    return torch.from_numpy(_mel_filterbank_np(sample_rate, n_fft, n_mels).T.copy()).to(device)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """[n_fft // 2 + 1, n_mels]: librosa's ``filters.mel(sr, n_fft, n_mels)`` (slaney scale and
    norm, fmin 0, fmax sr / 2), transposed, as audiotools' ``AudioSignal.get_mel_filters`` uses it."""
    return mel_filterbank_on(sample_rate, n_fft, n_mels, "cpu").clone()


def as_clips(x: Tensor) -> Tensor:
    """[S], [N, S] or [N, 1, S] -> float32 [N, S]."""
    if x.dim() == 1:
        x = x[None]
    elif x.dim() == 3:
        if x.shape[1] != 1:
            raise ValueError(f"expected mono clips [N, 1, S], got shape {tuple(x.shape)}")
        x = x[:, 0]
    elif x.dim() != 2:
        raise ValueError(f"expected clips [S], [N, S] or [N, 1, S], got shape {tuple(x.shape)}")
    return x.float()


def stft_magnitude(x: Tensor, window_length: int) -> Tensor:
    """|STFT| [N, window_length // 2 + 1, frames] of clips [N, S], as audiotools computes it with
    ``match_stride=False``: periodic Hann window, hop window_length // 4, centred frames with
    reflect padding (zero padding for clips of at most window_length // 2 samples)."""
    x = as_clips(x)
    pad_mode = "reflect" if x.shape[-1] > window_length // 2 else "constant"
    window = _window(window_length, str(x.device))
    spec = torch.stft(x, n_fft=window_length, hop_length=window_length // 4, window=window, center=True,
                      pad_mode=pad_mode, return_complex=True)
    return spec.abs()


def _per_clip_l1(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).abs().flatten(1).mean(1)


def mel_distance(x: Tensor, y: Tensor, sample_rate: int, n_mels: Sequence[int] = MEL_N_MELS,
                 window_lengths: Sequence[int] = MEL_WINDOW_LENGTHS, clamp_eps: float = CLAMP_EPS,
                 pow: float = MEL_POW, mag_weight: float = MEL_MAG_WEIGHT, log_weight: float = 1.0) -> Tensor:
    """DAC's MelSpectrogramLoss (final-config settings) between each pair of clips: [N].

    x, y: [S], [N, S] or [N, 1, S] clips of one length (reference and estimate; the distance is
    symmetric). Per scale the L1 is averaged over the clip's mel bands and frames; scales are summed.
    """
    x, y = as_clips(x), as_clips(y)
    total = x.new_zeros(x.shape[0])
    for bands, window_length in zip(n_mels, window_lengths):
        fbank = mel_filterbank_on(sample_rate, window_length, bands, str(x.device))
        mel_x = (stft_magnitude(x, window_length).transpose(1, 2) @ fbank).transpose(1, 2)
        mel_y = (stft_magnitude(y, window_length).transpose(1, 2) @ fbank).transpose(1, 2)
        total = total + log_weight * _per_clip_l1(mel_x.clamp(min=clamp_eps).pow(pow).log10(),
                                                  mel_y.clamp(min=clamp_eps).pow(pow).log10())
        if mag_weight:
            total = total + mag_weight * _per_clip_l1(mel_x, mel_y)
    return total


def stft_distance(x: Tensor, y: Tensor, window_lengths: Sequence[int] = STFT_WINDOW_LENGTHS,
                  clamp_eps: float = CLAMP_EPS, pow: float = STFT_POW, mag_weight: float = STFT_MAG_WEIGHT,
                  log_weight: float = 1.0) -> Tensor:
    """DAC's MultiScaleSTFTLoss (defaults) between each pair of clips: [N]. Per scale
    ``log_weight * L1(log10(clamp(|X|) ** pow), log10(clamp(|Y|) ** pow)) + mag_weight * L1(|X|, |Y|)``,
    each L1 averaged over the clip's bins and frames; scales are summed."""
    x, y = as_clips(x), as_clips(y)
    total = x.new_zeros(x.shape[0])
    for window_length in window_lengths:
        mag_x, mag_y = stft_magnitude(x, window_length), stft_magnitude(y, window_length)
        total = total + log_weight * _per_clip_l1(mag_x.clamp(min=clamp_eps).pow(pow).log10(),
                                                  mag_y.clamp(min=clamp_eps).pow(pow).log10())
        total = total + mag_weight * _per_clip_l1(mag_x, mag_y)
    return total


def si_sdr(reference: Tensor, estimate: Tensor, eps: float = SI_SDR_EPS) -> Tensor:
    """Scale-invariant SDR in dB of each estimate against its reference: [N] (float64).

    DAC's SISDRLoss (zero mean, scaling=True), negated: with r, e the zero-mean signals,
    alpha = (<e, r> + eps) / (<r, r> + eps), SI-SDR = 10 log10(|alpha r|^2 / |e - alpha r|^2 + eps).
    A perfect estimate gives +inf, as in DAC.
    """
    r = as_clips(reference).double()
    e = as_clips(estimate).double()
    r = r - r.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    scale = ((e * r).sum(-1, keepdim=True) + eps) / ((r * r).sum(-1, keepdim=True) + eps)
    target = scale * r
    residual = e - target
    return 10 * torch.log10(target.pow(2).sum(-1) / residual.pow(2).sum(-1) + eps)


# -- codebooks ------------------------------------------------------------------------------------
def bitrate_kbps(cfg: CodecConfig, n_q: int | None = None) -> float:
    """kbit/s of the first n_q codebooks (all by default): frame_rate * n_q * log2(codebook_size) / 1000."""
    n_q = cfg.n_q if n_q is None else n_q
    return cfg.frame_rate * n_q * math.log2(cfg.codebook_size) / 1000.0


def usage_stats(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per codebook, from counts [k, K]: (entropy / log2(K) in [0, 1], perplexity 2 ** entropy in [1, K]),
    entropy in bits of the empirical code distribution."""
    p = counts.double()
    p = p / p.sum(1, keepdim=True).clamp(min=1)
    entropy = -torch.special.xlogy(p, p).sum(1) / math.log(2)
    return entropy / math.log2(counts.shape[1]), torch.exp2(entropy)


# -- speech metrics -------------------------------------------------------------------------------
_MISSING_REPORTED: set[str] = set()


def _speech_backends() -> dict[str, Callable]:
    """The installed speech metrics ({"pesq": fn, "stoi": fn}); a missing package is reported once."""
    found = {}
    for name, module, fn in (("pesq", "pesq", "pesq"), ("stoi", "pystoi", "stoi")):
        try:
            found[name] = getattr(__import__(module), fn)
        except ImportError:
            if module not in _MISSING_REPORTED:
                _MISSING_REPORTED.add(module)
                log.warning("codec quality: the %r package is not installed, so eval/%s is skipped "
                            "(pip install %s)", module, name, module)
    return found


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SPEECH_SAMPLE_RATE) -> float | None:
    """Wideband PESQ (MOS-LQO, about 1.0 to 4.64) of one 16 kHz clip; None when PESQ cannot score it
    (too short, no utterance found)."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(sample_rate, np.asarray(reference, np.float64), np.asarray(estimate, np.float64), "wb"))
    except PesqError:
        return None


def stoi_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SPEECH_SAMPLE_RATE) -> float | None:
    """STOI (0 to 1) of one clip; None when the clip has too few non-silent frames for it
    (pystoi would warn and return 1e-5)."""
    from pystoi import stoi

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score = float(stoi(np.asarray(reference, np.float64), np.asarray(estimate, np.float64), sample_rate,
                           extended=False))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return None
    return score


# -- evaluation -----------------------------------------------------------------------------------
def _length_groups(lengths: Tensor) -> list[tuple[int, list[int]]]:
    """(length, batch indices) for each distinct valid length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths.tolist()):
        groups.setdefault(int(n), []).append(i)
    return list(groups.items())


def device_of(codec: torch.nn.Module) -> torch.device:
    return next(codec.parameters()).device


def reconstruct(codec: Codec, audio: Tensor, n_q: int | None) -> tuple[Tensor, Tensor]:
    """codes [N, k, T] and reconstruction [N, 1, S] of clips [N, 1, S] through encode/decode."""
    codes = codec.encode(audio, n_q)
    return codes, codec.decode(codes)[..., : audio.shape[-1]].float()


def measure_quality(codec: Codec, batches: Iterable[dict], n_q: int | None = None,
                    speech_metrics: bool = True) -> dict[str, float]:
    """Quality of ``codec`` with its first ``n_q`` codebooks (all by default) over ``batches``
    (dicts with "audio" [B, 1, S] and "lengths" [B], as ``aurora.data.build_loader`` gives).

    Returns ``eval/mel_distance``, ``eval/stft_distance``, ``eval/si_sdr_db`` (means over clips),
    ``eval/bitrate_kbps``, ``eval/usage_entropy/q{i}`` and ``eval/perplexity/q{i}`` per codebook
    (over every frame), ``eval/n_q`` and ``eval/clips``; for a 16 kHz codec with
    ``speech_metrics`` also ``eval/pesq`` and ``eval/stoi`` (means over the clips they can score;
    skipped, with one warning, when the package is missing).
    """
    cfg = codec.cfg
    k = cfg.n_q if n_q is None else int(n_q)
    if not 1 <= k <= cfg.n_q:
        raise ValueError(f"n_q must be in [1, {cfg.n_q}], got {n_q}")
    device = device_of(codec)
    speech = _speech_backends() if speech_metrics and cfg.sample_rate == SPEECH_SAMPLE_RATE else {}
    sums: dict[str, float] = defaultdict(float)
    speech_scores: dict[str, list[float]] = {name: [] for name in speech}
    counts = torch.zeros(k, cfg.codebook_size, dtype=torch.long, device=device)
    clips = 0
    was_training = codec.training
    codec.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for batch in batches:
                audio, lengths = batch["audio"], batch["lengths"]
                for length, index in _length_groups(lengths):
                    x = audio[index, :, :length].to(device=device, dtype=torch.float32)
                    codes, y = reconstruct(codec, x, k)
                    counts += code_counts(codes, cfg.codebook_size)
                    sums["mel_distance"] += mel_distance(x, y, cfg.sample_rate).sum().item()
                    sums["stft_distance"] += stft_distance(x, y).sum().item()
                    sums["si_sdr_db"] += si_sdr(x, y).sum().item()
                    clips += len(index)
                    if speech:
                        ref, est = x[:, 0].cpu().double().numpy(), y[:, 0].cpu().double().numpy()
                        for r, e in zip(ref, est):
                            if "pesq" in speech and (score := pesq_wb(r, e, cfg.sample_rate)) is not None:
                                speech_scores["pesq"].append(score)
                            if "stoi" in speech and (score := stoi_score(r, e, cfg.sample_rate)) is not None:
                                speech_scores["stoi"].append(score)
    finally:
        codec.train(was_training)
    if clips == 0:
        raise ValueError("measure_quality got no clips: the batches were empty")
    metrics = {f"{PREFIX}{name}": value / clips for name, value in sums.items()}
    metrics[f"{PREFIX}bitrate_kbps"] = bitrate_kbps(cfg, k)
    metrics[f"{PREFIX}n_q"] = float(k)
    metrics[f"{PREFIX}clips"] = float(clips)
    entropy, perplexity = usage_stats(counts.cpu())
    for i in range(k):
        metrics[f"{PREFIX}usage_entropy/q{i}"] = float(entropy[i])
        metrics[f"{PREFIX}perplexity/q{i}"] = float(perplexity[i])
    for name, scores in speech_scores.items():
        if scores:
            metrics[f"{PREFIX}{name}"] = float(np.mean(scores))
        else:
            log.warning("codec quality: no clip could be scored by %s (too short or silent)", name)
    return metrics


def bitrate_curve(codec: Codec, batches_factory: Callable[[], Iterable[dict]],
                  speech_metrics: bool = True) -> list[dict[str, float]]:
    """``measure_quality`` with k = 1 .. n_q codebooks, each over a fresh ``batches_factory()``."""
    return [measure_quality(codec, batches_factory(), n_q=k, speech_metrics=speech_metrics)
            for k in range(1, codec.cfg.n_q + 1)]
