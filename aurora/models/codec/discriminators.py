"""DAC's discriminator (Kumar et al. 2023): multi-period (HiFi-GAN's MPD) and multi-band complex
STFT (MRD) sub-discriminators.

Each sub-discriminator maps wav [B, 1, S] to a list of feature maps whose last element is its
logits, for the adversarial loss (the logits) and the feature-matching loss (the rest). Module
and parameter names follow DAC's `dac/model/discriminator.py` (`discriminators`, `convs`,
`band_convs`, `conv_post`).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from aurora.models.codec.layers import fp32_region


@dataclass
class DiscriminatorConfig:
    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    """Periods of the multi-period sub-discriminators, one each (empty for none)."""
    fft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512])
    """STFT sizes of the multi-band spectrogram sub-discriminators, one each (hop fft_size / 4;
    multiples of 8). Empty for none."""
    bands: list[list[float]] = field(
        default_factory=lambda: [[0.0, 0.1], [0.1, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]]
    )
    """Frequency bands of the spectrogram sub-discriminators as [low, high) fractions of the
    Nyquist frequency; each band gets its own conv stack."""
    channels: int = 32
    """Width multiplier: the period sub-discriminators use channels x [1, 4, 16, 32, 32] (DAC's
    32 ... 1024 at 32), the spectrogram ones `channels` throughout."""
    sample_rate: int = 44100
    """Sample rate of the audio in Hz. Recorded only, as in DAC: the bands are fractions of the
    Nyquist frequency whatever the rate."""

    def __post_init__(self):
        for name in ("channels", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiscriminatorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.periods and not self.fft_sizes:
            raise ValueError("DiscriminatorConfig.periods and .fft_sizes are both empty: name at least one "
                             "sub-discriminator")
        if any(p < 1 for p in self.periods):
            raise ValueError(f"DiscriminatorConfig.periods must all be >= 1, got {self.periods}")
        if any(n < 8 or n % 8 for n in self.fft_sizes):
            raise ValueError(
                f"DiscriminatorConfig.fft_sizes must be positive multiples of 8 (the STFT drops the frames "
                f"its (fft - hop) / 2 padding adds, which needs 2 * that padding = 3 hops), got {self.fft_sizes}"
            )
        if self.fft_sizes and not self.bands:
            raise ValueError("DiscriminatorConfig.bands must name at least one band for the spectrogram "
                             "sub-discriminators")
        for band in self.bands:
            if len(band) != 2 or not 0.0 <= band[0] < band[1] <= 1.0:
                raise ValueError(
                    f"DiscriminatorConfig.bands must be [low, high] pairs with 0 <= low < high <= 1, got {band}"
                )
            for n in self.fft_sizes:
                low, high = band_bins(band, n)
                if high <= low:
                    raise ValueError(
                        f"DiscriminatorConfig.bands: band {list(band)} holds no bin of the {n}-point STFT "
                        f"({n // 2 + 1} bins); widen the band or raise the fft_sizes"
                    )


def band_bins(band, fft_size: int) -> tuple[int, int]:
    """[low, high) fractions of Nyquist -> [low, high) STFT bin indices, as DAC rounds them."""
    bins = fft_size // 2 + 1
    return int(band[0] * bins), int(band[1] * bins)


LEAKY_SLOPE = 0.1


def _conv2d(*args, act: bool = True, **kwargs) -> nn.Module:
    """A weight-normed Conv2d, followed by LeakyReLU(0.1) unless act=False."""
    conv = weight_norm(nn.Conv2d(*args, **kwargs))
    return nn.Sequential(conv, nn.LeakyReLU(LEAKY_SLOPE)) if act else conv


class PeriodDiscriminator(nn.Module):
    """DAC's MPD: wav [B, 1, S] folded to [B, 1, S / period, period], so that each column holds
    the samples one period apart, then 2-D convs along time only (kernel (k, 1)).

    Feature maps are [B, C, T', period]; the last is the logits [B, 1, T', period].
    """

    def __init__(self, period: int, channels: int = 32):
        super().__init__()
        self.period = period
        widths = [1] + [channels * m for m in (1, 4, 16, 32, 32)]
        self.convs = nn.ModuleList(
            _conv2d(c_in, c_out, (5, 1), (3, 1) if i < 4 else 1, padding=(2, 0))
            for i, (c_in, c_out) in enumerate(zip(widths, widths[1:]))
        )
        self.conv_post = _conv2d(widths[-1], 1, kernel_size=(3, 1), padding=(1, 0), act=False)

    def forward(self, wav: Tensor) -> list[Tensor]:
        # Reflect-pad to a whole number of periods. As DAC, a length that is one already gets a
        # whole period more: the feature maps then match DAC's for every length.
        x = F.pad(wav, (0, self.period - wav.shape[-1] % self.period), mode="reflect")
        b = x.shape[0]
        # A (k, 1) kernel convolves each of the `period` columns on its own: run the columns as
        # a batch of 1-D signals [B * period, C, T'] with the same weights (1.5x faster than the
        # 2-D conv on CPU), and hand out [B, C, T', period] views, as the 2-D layout has them.
        x = x.view(b, -1, self.period).transpose(1, 2).reshape(b * self.period, 1, -1)
        fmap = []
        for layer in [*self.convs, self.conv_post]:
            conv = layer[0] if isinstance(layer, nn.Sequential) else layer
            x = F.conv1d(x, conv.weight.squeeze(-1), conv.bias, conv.stride[0], conv.padding[0])
            if layer is not self.conv_post:
                x = F.leaky_relu(x, LEAKY_SLOPE)
            fmap.append(x.view(b, self.period, x.shape[1], x.shape[2]).permute(0, 2, 3, 1))
        return fmap


class BandSTFTDiscriminator(nn.Module):
    """DAC's MRD: the complex STFT (Hann window, hop fft_size / 4) as two real channels
    [B, 2, frames, bins], split into frequency bands that each go through their own conv stack,
    concatenated again along frequency, and a last conv to the logits [B, 1, frames, F'].

    The STFT follows audiotools' `match_stride=True`, as DAC: reflect-pad by (fft - hop) / 2 (and
    on the right up to a whole hop), a centered STFT, then the first and last two frames dropped,
    so frames = ceil(S / hop). It needs S > 3 * fft_size / 8 samples.
    """

    def __init__(self, fft_size: int, bands: list[list[float]], channels: int = 32, sample_rate: int = 44100):
        super().__init__()
        self.fft_size = fft_size
        self.hop_length = fft_size // 4
        self.sample_rate = sample_rate
        self.bands = [band_bins(b, fft_size) for b in bands]
        """[low, high) bin indices of each band."""
        ch = channels

        def stack() -> nn.ModuleList:
            return nn.ModuleList([
                _conv2d(2, ch, (3, 9), (1, 1), padding=(1, 4)),
                _conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(ch, ch, (3, 3), (1, 1), padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.conv_post = _conv2d(ch, 1, (3, 3), (1, 1), padding=(1, 1), act=False)

    def spectrogram(self, wav: Tensor) -> Tensor:
        """wav [B, 1, S] -> complex STFT as real [B, 2, ceil(S / hop), fft_size / 2 + 1], fp32."""
        length = wav.shape[-1]
        pad = (self.fft_size - self.hop_length) // 2
        if length <= pad:
            raise ValueError(f"the {self.fft_size}-point STFT discriminator needs more than {pad} samples "
                             f"(3 / 8 of its fft_size), got {length}")
        right = math.ceil(length / self.hop_length) * self.hop_length - length
        # In bf16 the STFT's sums over 2048 samples lose the quiet bins; run it in fp32.
        with fp32_region(wav.device):
            x = F.pad(wav.float(), (pad, pad + right), mode="reflect").flatten(0, 1)
            window = torch.hann_window(self.fft_size, device=x.device)
            spec = torch.stft(x, self.fft_size, self.hop_length, window=window, center=True, return_complex=True)
            spec = torch.view_as_real(spec[..., 2:-2])  # [B, F, T, 2]
        return spec.permute(0, 3, 2, 1)

    def forward(self, wav: Tensor) -> list[Tensor]:
        spec = self.spectrogram(wav)
        fmap, outs = [], []
        for (low, high), stack in zip(self.bands, self.band_convs):
            x = spec[..., low:high]
            for layer in stack:
                x = layer(x)
                fmap.append(x)
            outs.append(x)
        fmap.append(self.conv_post(torch.cat(outs, dim=-1)))
        return fmap


class Discriminator(nn.Module):
    """All period sub-discriminators, then all spectrogram ones, on peak-normalized input.

    forward(wav [B, 1, S]) -> one list of feature maps per sub-discriminator (logits last).
    """

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, cfg.channels) for p in cfg.periods]
            + [BandSTFTDiscriminator(n, cfg.bands, cfg.channels, cfg.sample_rate) for n in cfg.fft_sizes]
        )

    @staticmethod
    def preprocess(wav: Tensor) -> Tensor:
        """Remove the DC offset and peak-normalize each clip to 0.8, as DAC: the discriminator
        judges the waveform's shape, whatever its level."""
        wav = wav - wav.mean(dim=-1, keepdim=True)
        return 0.8 * wav / (wav.abs().amax(dim=-1, keepdim=True) + 1e-9)

    def forward(self, wav: Tensor) -> list[list[Tensor]]:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio [B, 1, S], got shape {tuple(wav.shape)}")
        wav = self.preprocess(wav)
        return [d(wav) for d in self.discriminators]

    def shard_units(self) -> list[nn.Module]:
        """The sub-discriminators, which an FSDP engine wraps one by one."""
        return list(self.discriminators)
