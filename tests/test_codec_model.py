import math

import pytest
import torch

from aurora.models.codec import (
    Codec,
    CodecConfig,
    Decoder,
    Encoder,
    ResidualVectorQuantizer,
    codebook_usage,
)
from aurora.tasks.audio_losses import MultiScaleMelLoss

TINY = dict(channels=4, strides=[2, 4], latent_dim=8, n_q=3, codebook_size=16)


def test_default_config_is_50hz_at_16khz():
    cfg = CodecConfig()
    assert cfg.hop_length == 320
    assert cfg.frame_rate == 50.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(codebook_size=40000), "int16"),
        (dict(codebook_size=1), "codebook_size"),
        (dict(strides=[]), "at least one"),
        (dict(strides=[2, 1]), ">= 2"),
        (dict(n_q=0), "n_q"),
        (dict(channels=0), "channels"),
        (dict(latent_dim=-1), "latent_dim"),
        (dict(sample_rate=0), "sample_rate"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        CodecConfig(**overrides)


@pytest.mark.parametrize("strides", [[2, 4], [3, 5, 2], [4, 7]])
def test_encoder_decoder_lengths_are_exact(strides):
    cfg = CodecConfig(**{**TINY, "strides": strides})
    frames = 6
    z = Encoder(cfg)(torch.randn(2, 1, frames * cfg.hop_length))
    assert z.shape == (2, cfg.latent_dim, frames)
    assert Decoder(cfg)(z).shape == (2, 1, frames * cfg.hop_length)


@pytest.mark.parametrize("length", [40, 41, 37, 1, 8])
def test_codec_shapes_for_any_length(length):
    torch.manual_seed(0)
    cfg = CodecConfig(**TINY)
    codec = Codec(cfg)
    wav = torch.randn(2, 1, length)
    frames = math.ceil(length / cfg.hop_length)

    out = codec(wav)
    assert out.recon.shape == wav.shape
    assert out.codes.shape == (2, cfg.n_q, frames)
    assert out.commitment_loss.shape == out.codebook_loss.shape == ()

    codes = codec.encode(wav)
    assert codes.dtype == torch.long
    assert torch.equal(codes, out.codes)
    assert 0 <= codes.min() and codes.max() < cfg.codebook_size
    assert codec.encode(wav, n_q=2).shape == (2, 2, frames)
    assert codec.decode(codes).shape == (2, 1, frames * cfg.hop_length)
    assert codec.decode(codes[:, :1]).shape == (2, 1, frames * cfg.hop_length)


def test_codec_rejects_non_mono_input():
    with pytest.raises(ValueError, match=r"\[B, 1, S\]"):
        Codec(CodecConfig(**TINY))(torch.randn(2, 2, 16))


def test_straight_through_gradients():
    torch.manual_seed(0)
    codec = Codec(CodecConfig(**TINY))
    codebooks = [vq.codebook.weight for vq in codec.quantizer.quantizers]
    out = codec(torch.randn(2, 1, 64))

    # The reconstruction reaches the encoder through the quantizer, but never the codebooks.
    out.recon.square().mean().backward(retain_graph=True)
    assert codec.encoder.stem.parametrizations.weight.original1.grad.abs().sum() > 0
    assert all(w.grad is None for w in codebooks)

    # The codebook loss moves exactly the codebook rows that were used.
    out.codebook_loss.backward()
    for stage, w in enumerate(codebooks):
        used = torch.zeros(w.shape[0], dtype=torch.bool)
        used[out.codes[:, stage].flatten()] = True
        row_grad = w.grad.abs().sum(1)
        assert (row_grad[used] > 0).all() and (row_grad[~used] == 0).all()


def hand_rvq():
    """Two stages over 2-d vectors: coarse unit axes, then fine 0.1 steps."""
    rvq = ResidualVectorQuantizer(dim=2, n_q=2, codebook_size=3)
    with torch.no_grad():
        rvq.quantizers[0].codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        rvq.quantizers[1].codebook.weight.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]]))
    return rvq


def test_residual_quantization_by_hand():
    rvq = hand_rvq()
    # [B=1, D=2, T=2]: frames (1.08, 0.03) and (0.04, 0.93)
    z = torch.tensor([[[1.08, 0.04], [0.03, 0.93]]])
    codes = rvq.encode(z)
    assert codes.tolist() == [[[1, 2], [1, 0]]]

    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    both = torch.tensor([[[1.1, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(rvq.decode(codes[:, :1]), first)
    torch.testing.assert_close(rvq.decode(codes), both)
    assert (z - both).square().sum() < (z - first).square().sum() < z.square().sum()

    out = rvq(z)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.quantized, both)
    # Per stage mse(residual, code vector), summed over the two stages.
    stage1 = torch.tensor([0.08, 0.04, 0.03, -0.07]).square().mean()
    stage2 = torch.tensor([-0.02, 0.04, 0.03, -0.07]).square().mean()
    torch.testing.assert_close(out.commitment_loss, stage1 + stage2)
    torch.testing.assert_close(out.codebook_loss, stage1 + stage2)


def test_encode_rejects_bad_n_q():
    with pytest.raises(ValueError, match="n_q"):
        hand_rvq().encode(torch.zeros(1, 2, 3), n_q=3)


def test_codebook_usage_is_perplexity():
    uniform = torch.arange(8).repeat(2, 1).view(1, 2, 8)
    collapsed = torch.zeros(1, 2, 8, dtype=torch.long)
    torch.testing.assert_close(codebook_usage(uniform, 8), torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(codebook_usage(collapsed, 8), torch.tensor([1.0, 1.0]))
    half = torch.tensor([[[0, 0, 1, 1]]])
    torch.testing.assert_close(codebook_usage(half, 4), torch.tensor([2.0]))


def test_shard_units_are_the_codec_stages():
    codec = Codec(CodecConfig(**TINY))
    units = codec.shard_units()
    assert len(units) == 2 * len(TINY["strides"]) + 1
    assert codec.quantizer in units
    submodules = set(codec.modules())
    assert all(u in submodules for u in units)
    assert len({id(u) for u in units}) == len(units)


def test_state_dict_holds_only_parameters():
    codec = Codec(CodecConfig(**TINY))
    assert set(codec.state_dict()) == {name for name, _ in codec.named_parameters()}


def test_tiny_codec_overfits_a_sine():
    torch.manual_seed(0)
    codec = Codec(CodecConfig(channels=8, strides=[2, 4, 5], latent_dim=16, n_q=4, codebook_size=64))
    mel = MultiScaleMelLoss(16000)
    wav = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(4000) / 16000).view(1, 1, -1)
    opt = torch.optim.Adam(codec.parameters(), lr=5e-3)
    losses = []
    for _ in range(150):
        out = codec(wav)
        mel_loss = mel(out.recon, wav)
        loss = mel_loss + out.codebook_loss + 0.25 * out.commitment_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mel_loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
