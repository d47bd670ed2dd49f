"""What a person listens to and looks at after a codec evaluation: each clip's original and
reconstruction as FLAC, and a PNG of their log-mel spectrograms one above the other. The numbers
are ``aurora.metrics.codec_quality``'s."""

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aurora.metrics.codec_quality import CLAMP_EPS, as_clips, device_of, mel_filterbank_on, reconstruct, stft_magnitude
from aurora.models.codec import Codec


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key) or "clip"


def _plot_log_mel(sample_rate: int) -> tuple[int, int]:
    n_fft = 2 ** math.ceil(math.log2(max(0.032 * sample_rate, 16)))
    return n_fft, min(80, n_fft // 4)


def log_mel_db(clip: Tensor, sample_rate: int) -> np.ndarray:
    """dB log-mel spectrogram [n_mels, frames] of one clip for display: 32 ms windows, hop 8 ms,
    up to 80 slaney mel bands, 20 log10(clamp(mel, 1e-5))."""
    n_fft, bands = _plot_log_mel(sample_rate)
    clip = as_clips(clip.detach().cpu())
    fbank = mel_filterbank_on(sample_rate, n_fft, bands, "cpu")
    mel = (stft_magnitude(clip, n_fft).transpose(1, 2) @ fbank).transpose(1, 2)
    return (20 * mel.clamp(min=CLAMP_EPS).log10())[0].numpy()


def _plot_pair(orig: Tensor, recon: Tensor, sample_rate: int, key: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original, reconstructed = log_mel_db(orig, sample_rate), log_mel_db(recon, sample_rate)
    vmax = float(original.max())
    seconds = orig.shape[-1] / sample_rate
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, layout="constrained")
    for ax, db, label in zip(axes, (original, reconstructed), ("original", "reconstruction")):
        image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                          vmin=vmax - 80, vmax=vmax, extent=(0, seconds, 0, db.shape[0]))
        ax.set_ylabel(f"{label}\nmel bin")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), location="right", label="dB", shrink=0.6)
    fig.suptitle(f"{key}  ({seconds:.2f} s, {sample_rate} Hz)", fontsize="medium")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_reconstructions(codec: Codec, batch: dict, out_dir: Path, max_clips: int = 4,
                          n_q: int | None = None) -> list[Path]:
    """For the first ``max_clips`` clips of ``batch``: ``KEY.orig.flac`` and ``KEY.recon.flac``
    (valid samples only, clamped to [-1, 1]) and ``KEY.png`` (original above reconstructed log-mel
    spectrogram, titled with the key) in ``out_dir``. Returns the written paths."""
    import soundfile as sf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample_rate = codec.cfg.sample_rate
    device = device_of(codec)
    written: list[Path] = []
    was_training = codec.training
    codec.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for i, key in enumerate(batch["keys"][:max_clips]):
                length = int(batch["lengths"][i])
                x = batch["audio"][i: i + 1, :, :length].to(device=device, dtype=torch.float32)
                _, y = reconstruct(codec, x, n_q)
                x, y = x[0, 0].cpu().clamp(-1, 1), y[0, 0].cpu().clamp(-1, 1)
                stem = _file_stem(str(key))
                for suffix, clip in (("orig", x), ("recon", y)):
                    path = out_dir / f"{stem}.{suffix}.flac"
                    sf.write(path, clip.numpy(), sample_rate, format="FLAC")
                    written.append(path)
                written.append(_plot_pair(x, y, sample_rate, str(key), out_dir / f"{stem}.png"))
    finally:
        codec.train(was_training)
    return written
