"""Reconstruction losses for padded batches of audio: multi-scale log-mel L1 and waveform L1.

Both take `lengths` [B], the number of valid samples of each item; samples beyond it are padding
and never influence the loss or receive a gradient.
"""

from collections.abc import Sequence

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from aurora.models.codec.layers import fp32_region


def _sample_mask(lengths: Tensor, num_samples: int) -> Tensor:
    return torch.arange(num_samples, device=lengths.device) < lengths[:, None]


def masked_l1(x: Tensor, y: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Mean |x - y| over the valid samples of [B, C, S] signals (all of them if lengths is None)."""
    diff = (x - y).abs()
    if lengths is None:
        return diff.mean()
    mask = _sample_mask(lengths, x.shape[-1])[:, None, :]
    return (diff * mask).sum() / (mask.sum() * x.shape[1])


def _reflect_right(x: Tensor, lengths: Tensor, pad: int) -> Tensor:
    """Replace each item's padding by the reflection of its own last samples, over `pad` more samples.

    A centred STFT frame near a clip's end then sees exactly what it would if the clip were
    transformed alone (torch.stft's "reflect" padding), and no padding sample is ever read.
    Clips shorter than `pad` + 1 samples repeat their first sample where reflection runs out.
    """
    pos = torch.arange(x.shape[-1] + pad, device=x.device)
    last = lengths[:, None] - 1
    index = torch.where(pos <= last, pos, 2 * last - pos).clamp(min=0)
    return x.gather(-1, index[:, None, :].expand(-1, x.shape[1], -1))


class MultiScaleMelLoss(nn.Module):
    """L1 distance between log10 mel magnitude spectrograms at several STFT sizes (DAC style).

    Per scale: a Hann-windowed, centred STFT with hop n_fft // 4, magnitudes (power 1) through
    an HTK mel filterbank, clamped at `clamp_eps` and log10'd; the L1 is averaged over every
    valid (item, channel, mel, frame) of the batch, so each frame weighs the same whatever the
    length of its clip. The scales are summed. With `lengths`, an item of length L counts only
    the 1 + L // hop frames a centred STFT of the unpadded clip has, computed as if the clip
    were alone (equal to cropping each item and transforming it separately). Lengths must be >= 1.
    """

    def __init__(
        self,
        sample_rate: int,
        n_ffts: Sequence[int] = (256, 512, 1024),
        n_mels: Sequence[int] = (40, 80, 160),
        f_min: float = 0.0,
        f_max: float | None = None,
        clamp_eps: float = 1e-5,
    ):
        super().__init__()
        if len(n_ffts) != len(n_mels):
            raise ValueError(f"n_ffts {tuple(n_ffts)} and n_mels {tuple(n_mels)} must have the same length")
        self.n_ffts = tuple(n_ffts)
        self.clamp_eps = clamp_eps
        f_max = sample_rate / 2 if f_max is None else f_max
        # Non-persistent: they follow .to(device) but are rebuilt from the arguments, not checkpointed.
        for n_fft, mels in zip(self.n_ffts, n_mels):
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)
            fbank = AF.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, mels, sample_rate)
            self.register_buffer(f"fbank_{n_fft}", fbank, persistent=False)

    def _log_mel(self, x: Tensor, n_fft: int) -> Tensor:
        """[B, C, S] -> [B, C, n_mels, frames]."""
        window = getattr(self, f"window_{n_fft}")
        # In fp32 under autocast too: the filterbank matmul would run in bf16, and the log of
        # quiet bins amplifies its rounding.
        with fp32_region(x.device):
            spec = AF.spectrogram(
                x, pad=0, window=window, n_fft=n_fft, hop_length=n_fft // 4, win_length=n_fft,
                power=1.0, normalized=False, center=True, pad_mode="reflect",
            )
            mel = (spec.transpose(-1, -2) @ getattr(self, f"fbank_{n_fft}")).transpose(-1, -2)
            return mel.clamp(min=self.clamp_eps).log10()

    def forward(self, x: Tensor, y: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x, y: [B, C, S] audio; lengths: [B] valid samples per item (None: all valid)."""
        x, y = x.float(), y.float()
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], device=x.device)
        pad = max(self.n_ffts) // 2
        x, y = _reflect_right(x, lengths, pad), _reflect_right(y, lengths, pad)
        loss = x.new_zeros(())
        for n_fft in self.n_ffts:
            diff = (self._log_mel(x, n_fft) - self._log_mel(y, n_fft)).abs()
            frames = torch.arange(diff.shape[-1], device=x.device)
            mask = frames < (1 + lengths[:, None] // (n_fft // 4))
            per_item = diff.sum(dim=(1, 2))
            loss = loss + (per_item * mask).sum() / (mask.sum() * diff.shape[1] * diff.shape[2])
        return loss
