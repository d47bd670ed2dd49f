import math

import pytest
import torch
import torch.nn.functional as F

from aurora.models.codec import (
    BandSTFTDiscriminator,
    Discriminator,
    DiscriminatorConfig,
    PeriodDiscriminator,
)
from aurora.precision import bf16_autocast

SMALL = dict(periods=[2, 3], fft_sizes=[128, 64], channels=4, sample_rate=16000)
# DAC's default discriminator (5 periods, 3 STFT sizes, 5 bands, width 32): the count of
# `dac.model.Discriminator()` of descript-audio-codec, whose state dict this one loads as is.
DAC_DISCRIMINATOR_PARAMS = 42_519_760


def small(**overrides) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(DiscriminatorConfig(**{**SMALL, **overrides}))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(periods=[], fft_sizes=[]), "at least one"),
        (dict(periods=[0]), "periods"),
        (dict(fft_sizes=[100]), "multiples of 8"),
        (dict(bands=[]), "at least one band"),
        (dict(bands=[[0.5, 0.25]]), "0 <= low < high <= 1"),
        (dict(bands=[[0.0, 1.5]]), "0 <= low < high <= 1"),
        (dict(bands=[[0.0, 0.02], [0.02, 1.0]]), "holds no bin of the 64-point STFT"),
        (dict(channels=0), "channels"),
        (dict(sample_rate=0), "sample_rate"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        DiscriminatorConfig(**{**SMALL, **overrides})


def test_dac_default_size():
    cfg = DiscriminatorConfig()
    with torch.device("meta"):
        disc = Discriminator(cfg)
    assert len(disc.discriminators) == 8
    assert sum(p.numel() for p in disc.parameters()) == DAC_DISCRIMINATOR_PARAMS
    mpd = disc.discriminators[0]
    assert [layer[0].out_channels for layer in mpd.convs] == [32, 128, 512, 1024, 1024]
    assert disc.discriminators[5].bands == [(0, 102), (102, 256), (256, 512), (512, 768), (768, 1025)]


@pytest.mark.parametrize("length", [1001, 997, 1024])
def test_output_structure(length):
    disc = small()
    wav = torch.randn(2, 1, length)
    out = disc(wav)
    cfg = disc.cfg
    assert len(out) == len(cfg.periods) + len(cfg.fft_sizes)
    for fmaps in out:
        assert isinstance(fmaps, list) and fmaps[-1].shape[1] == 1  # the logits come last

    for period, fmaps in zip(cfg.periods, out):
        # 5 convs + logits, [B, C, T', period]; DAC pads 1..period samples to a whole number of periods
        assert len(fmaps) == 6
        rows = (length + period - length % period) // period
        expected_rows = [math.ceil(rows / 3**i) for i in (1, 2, 3, 4, 4, 4)]
        channels = [4, 16, 64, 128, 128, 1]
        assert [tuple(f.shape) for f in fmaps] == [(2, c, r, period) for c, r in zip(channels, expected_rows)]

    for n_fft, fmaps, sub in zip(cfg.fft_sizes, out[len(cfg.periods):], disc.discriminators[len(cfg.periods):]):
        n_bands = len(cfg.bands)
        assert len(sub.bands) == len(sub.band_convs) == n_bands
        assert len(fmaps) == 5 * n_bands + 1
        frames = math.ceil(length / (n_fft // 4))  # audiotools' match_stride: one frame per hop
        widths = [high - low for low, high in sub.bands]
        assert sub.bands[0][0] == 0 and sub.bands[-1][1] == n_fft // 2 + 1
        for band, width in enumerate(widths):
            first, last = fmaps[5 * band], fmaps[5 * band + 4]
            assert first.shape == (2, 4, frames, width)
            assert last.shape == (2, 4, frames, math.ceil(width / 8))  # three stride-2 convs
        assert fmaps[-1].shape == (2, 1, frames, sum(math.ceil(w / 8) for w in widths))


def test_spectrogram_is_the_match_stride_stft():
    # Frame t is the Hann-windowed rFFT of the fft_size samples centred on the middle of hop t.
    sub = BandSTFTDiscriminator(64, DiscriminatorConfig().bands, channels=4, sample_rate=16000)
    wav = torch.randn(1, 1, 500, dtype=torch.float64).float()
    spec = sub.spectrogram(wav)
    hop = 16
    assert spec.shape == (1, 2, math.ceil(500 / hop), 33) and spec.dtype == torch.float32
    window = torch.hann_window(64)
    for t in (3, 10, 25):
        start = t * hop + hop // 2 - 32
        expected = torch.fft.rfft(wav[0, 0, start : start + 64] * window)
        torch.testing.assert_close(spec[0, 0, t], expected.real, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(spec[0, 1, t], expected.imag, atol=1e-4, rtol=1e-4)


def test_input_normalization_makes_output_level_invariant():
    disc = small()
    wav = torch.randn(2, 1, 1001)
    with torch.no_grad():
        out = disc(wav)
        louder = disc(3.7 * wav + 0.25)  # gain and DC offset are normalized away
    for a, b in zip(out, louder):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    normalized = Discriminator.preprocess(3.7 * wav + 0.25)
    torch.testing.assert_close(normalized.abs().amax(-1), torch.full((2, 1), 0.8))
    torch.testing.assert_close(normalized.mean(-1), torch.zeros(2, 1), atol=1e-6, rtol=0)


def test_gradients_reach_the_input_and_every_parameter():
    disc = small()
    wav = torch.randn(2, 1, 777, requires_grad=True)
    out = disc(wav)
    sum(fmaps[-1].mean() for fmaps in out).backward()
    assert torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.filterwarnings("ignore:oneDNN's bf16 convolutions are wrong on this CPU")
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bf16_autocast_keeps_every_feature_map_finite_and_close_to_fp32(seed):
    """Under aurora's bf16 autocast the STFT runs in fp32 and the convolutions in bf16, and every
    feature map of every sub-discriminator stays finite and within bf16 rounding of the fp32 map:
    no layer overflows (the largest activation is checked to stay far below bf16's range, which
    is fp32's), on several fixed inputs. On an AMX Xeon, oneDNN's bf16 kernels get the STFT
    discriminator's last layers (a 9-wide kernel over 1-2 frequency bins) wrong, and this passes
    because ``aurora.precision`` runs them on ATen's kernels there."""
    disc = small()
    wav = 0.5 * torch.randn(2, 1, 1001, generator=torch.Generator().manual_seed(seed))
    sub = disc.discriminators[-1]
    with torch.no_grad():
        reference = disc(wav)
        with bf16_autocast("cpu"):
            assert sub.spectrogram(wav.bfloat16()).dtype == torch.float32
            out = disc(wav)
    assert out[-1][-1].dtype == torch.bfloat16  # the convs do run in bf16
    names = [f"period {p}" for p in disc.cfg.periods] + [f"stft {n}" for n in disc.cfg.fft_sizes]
    for name, maps, ref_maps in zip(names, out, reference):
        for layer, (got, want) in enumerate(zip(maps, ref_maps)):
            where = f"{name} discriminator, feature map {layer} of {len(maps)}"
            assert torch.isfinite(got).all(), f"{where}: non-finite in bf16"
            assert want.abs().max() < 1e4, f"{where}: fp32 activations reach {want.abs().max():.3g}"
            error = (got.float() - want).norm() / want.norm().clamp_min(1e-12)
            assert error < 0.05, f"{where}: relative error {error:.3g} against fp32"


def test_rejects_bad_input():
    disc = small()
    with pytest.raises(ValueError, match=r"\[B, 1, S\]"):
        disc(torch.randn(2, 2, 1000))
    with pytest.raises(ValueError, match="needs more than 48 samples"):
        disc(torch.randn(1, 1, 40))


def test_shard_units_are_the_sub_discriminators():
    disc = small()
    units = disc.shard_units()
    assert units == list(disc.discriminators)
    assert [type(u) for u in units] == [PeriodDiscriminator] * 2 + [BandSTFTDiscriminator] * 2


@pytest.mark.parametrize("period", [2, 3, 11])
def test_period_discriminator_equals_its_2d_definition(period):
    """The columns run as a batch of 1-D convolutions; the result is DAC's 2-D (k, 1) conv on
    the folded signal, exactly, map for map."""
    torch.manual_seed(0)
    d = PeriodDiscriminator(period, 4)
    wav = torch.randn(3, 1, 1001)
    x = F.pad(wav, (0, period - wav.shape[-1] % period), mode="reflect").view(3, 1, -1, period)
    reference = []
    for layer in d.convs:
        x = layer(x)
        reference.append(x)
    reference.append(d.conv_post(x))
    for got, want in zip(d(wav), reference, strict=True):
        assert torch.equal(got, want)
