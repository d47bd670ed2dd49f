"""Render one audio sample to a PNG: waveform on top, log-mel spectrogram below.

Used by ``python -m tools.inspect_shards SHARDS --plot KEY --png OUT.png``; kept apart so
that verifying shards never imports matplotlib.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

TITLE_CHARS = 160
"""Longer captions are cut (with an ellipsis) so the title stays within the figure."""


def log_mel(mono: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """``(dB [n_mels, frames], hop seconds)``: 25 ms windows every 10 ms, at most 80 mel bins."""
    import torch
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    n_fft = 2 ** math.ceil(math.log2(max(0.025 * sample_rate, 16)))
    hop = max(1, sample_rate // 100)
    mel = T.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=min(80, n_fft // 4),
                           power=2.0)(torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)))
    db = AF.amplitude_to_DB(mel, multiplier=10.0, amin=1e-10, db_multiplier=0.0, top_db=80.0)
    return db.numpy(), hop / sample_rate


def plot_sample(audio: np.ndarray, sample_rate: int, key: str, text: str, out: str | Path) -> Path:
    """Write the waveform (every channel) and log-mel spectrogram (of the mix) of ``audio``
    (float [samples, channels]) to the PNG ``out``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = len(audio) / sample_rate
    db, hop_s = log_mel(audio.mean(axis=1), sample_rate)
    fig, (wave_ax, mel_ax) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                          gridspec_kw={"height_ratios": [1, 1.6]}, layout="constrained")
    time = np.arange(len(audio)) / sample_rate
    for channel in range(audio.shape[1]):
        wave_ax.plot(time, audio[:, channel], linewidth=0.5,
                     label=f"channel {channel}" if audio.shape[1] > 1 else None)
    if audio.shape[1] > 1:
        wave_ax.legend(loc="upper right", fontsize="small")
    wave_ax.set_ylabel("amplitude")
    wave_ax.set_xlim(0, seconds)
    image = mel_ax.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                          extent=(-hop_s / 2, (db.shape[1] - 0.5) * hop_s, 0, db.shape[0]))  # centred frames
    mel_ax.set_xlabel("time (s)")
    mel_ax.set_ylabel("mel bin")
    fig.colorbar(image, ax=[wave_ax, mel_ax], location="right", label="dB", shrink=0.6)
    caption = text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"
    title = f"{key}  ({seconds:.2f} s, {sample_rate} Hz, {audio.shape[1]} ch)"
    fig.suptitle("\n".join([title, *textwrap.wrap(repr(caption), 100)]), fontsize="medium")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
