import math

import pytest
import torch
import torch.nn.functional as F

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
        (dict(codebook_dim=0), "codebook_dim"),
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

    # The reconstruction reaches the encoder through the quantizer's projections, but never the codebooks.
    out.recon.square().mean().backward(retain_graph=True)
    assert codec.encoder.stem.parametrizations.weight.original1.grad.abs().sum() > 0
    for vq in codec.quantizer.quantizers:
        assert vq.in_proj.parametrizations.weight.original1.grad.abs().sum() > 0
        assert vq.out_proj.parametrizations.weight.original1.grad.abs().sum() > 0
    assert all(w.grad is None for w in codebooks)

    # The codebook loss moves exactly the codebook rows that were used.
    out.codebook_loss.backward()
    for stage, w in enumerate(codebooks):
        used = torch.zeros(w.shape[0], dtype=torch.bool)
        used[out.codes[:, stage].flatten()] = True
        row_grad = w.grad.abs().sum(1)
        assert (row_grad[used] > 0).all() and (row_grad[~used] == 0).all()


# Two stages over 2-d latents with 2-d lookup spaces, as (in_proj W, b, out_proj W, b, codebook).
# Stage 0 doubles x on the way in and halves it on the way out, so its codes decode to
# (1, 0), (0, 1), (0.15, 0.3), (-0.5, -1); stage 1 decodes its unit codes to 0.1 steps.
HAND_STAGES = [
    (
        [[2.0, 0.0], [0.0, 1.0]], [0.0, 0.0],
        [[0.5, 0.0], [0.0, 1.0]], [0.0, 0.0],
        [[2.0, 0.0], [0.0, 1.0], [0.3, 0.3], [-1.0, -1.0]],
    ),
    (
        [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0],
        [[0.1, 0.0], [0.0, 0.1]], [0.0, 0.0],
        [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]],
    ),
]


def set_stages(rvq, stages):
    with torch.no_grad():
        for vq, (w_in, b_in, w_out, b_out, codebook) in zip(rvq.quantizers, stages):
            # Assigning a weight-normed weight sets its magnitude and direction (right_inverse).
            vq.in_proj.weight = torch.as_tensor(w_in, dtype=torch.float)[..., None]
            vq.in_proj.bias.copy_(torch.as_tensor(b_in))
            vq.out_proj.weight = torch.as_tensor(w_out, dtype=torch.float)[..., None]
            vq.out_proj.bias.copy_(torch.as_tensor(b_out))
            vq.codebook.weight.copy_(torch.as_tensor(codebook))
    return rvq


def hand_rvq():
    rvq = ResidualVectorQuantizer(dim=2, n_q=2, codebook_size=4, codebook_dim=2)
    return set_stages(rvq, HAND_STAGES)


def reference_rvq(z, stages):
    """The factorized, l2-normalized RVQ spelled out frame by frame on z [D, T]: project in, pick
    the code of highest cosine similarity, project the (unnormalized) code out, subtract.
    Returns codes [n_q, T], the per-stage decodings [n_q, D, T] and the summed losses."""
    residual, codes, decoded, commitment = z.clone(), [], [], 0.0
    for w_in, b_in, w_out, b_out, codebook in stages:
        w_in, b_in, w_out, b_out, codebook = (
            torch.as_tensor(a, dtype=torch.float) for a in (w_in, b_in, w_out, b_out, codebook)
        )
        z_e = w_in @ residual + b_in[:, None]  # [d, T]
        cosine = F.normalize(z_e, dim=0).t() @ F.normalize(codebook, dim=1).t()  # [T, K]
        stage_codes = cosine.argmax(1)
        z_q = codebook[stage_codes].t()  # [d, T]
        out = w_out @ z_q + b_out[:, None]
        commitment = commitment + (z_e - z_q).square().mean()
        codes.append(stage_codes)
        decoded.append(out)
        residual = residual - out
    return torch.stack(codes), torch.stack(decoded), commitment


def test_residual_quantization_by_hand():
    rvq = hand_rvq()
    # [B=1, D=2, T=3]: frames (1.08, 0.03), (0.04, 0.93) and (0.1, 0.02)
    z = torch.tensor([[[1.08, 0.04, 0.1], [0.03, 0.93, 0.02]]])
    # Stage 0 looks up z_e = (2.16, 0.03), (0.08, 0.93), (0.2, 0.02) by direction: codes 0, 1, 0.
    # (By plain L2 distance the short code 2 = (0.3, 0.3) would win for the third frame.)
    # The residuals (0.08, 0.03), (0.04, -0.07), (-0.9, 0.02) point to stage 1's codes 0, 3, 2.
    codes = rvq.encode(z)
    assert codes.tolist() == [[[0, 1, 0], [0, 3, 2]]]
    z_e0 = torch.tensor([[2.16, 0.08, 0.2], [0.03, 0.93, 0.02]])
    codebook0 = torch.tensor(HAND_STAGES[0][4])
    assert torch.cdist(z_e0.t(), codebook0).argmin(1).tolist() == [0, 1, 2]

    ref_codes, ref_decoded, ref_commitment = reference_rvq(z[0], HAND_STAGES)
    assert torch.equal(codes[0], ref_codes)

    first = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    both = torch.tensor([[[1.1, 0.0, 0.9], [0.0, 0.9, 0.0]]])
    torch.testing.assert_close(first[0], ref_decoded[0])
    torch.testing.assert_close(both[0], ref_decoded.sum(0))
    torch.testing.assert_close(rvq.decode(codes[:, :1]), first)
    torch.testing.assert_close(rvq.decode(codes), both)
    assert (z - both).square().sum() < (z - first).square().sum() < z.square().sum()

    out = rvq(z)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.quantized, both)
    # Per stage mse(z_e, code) in the lookup space, summed over the two stages.
    stage1 = torch.tensor([0.16, 0.08, -1.8, 0.03, -0.07, 0.02]).square().mean()
    stage2 = torch.tensor([-0.92, 0.04, 0.1, 0.03, 0.93, 0.02]).square().mean()
    torch.testing.assert_close(out.commitment_loss, stage1 + stage2)
    torch.testing.assert_close(out.codebook_loss, stage1 + stage2)
    torch.testing.assert_close(out.commitment_loss, ref_commitment)


def test_quantizer_matches_reference_with_random_projections():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=6, n_q=3, codebook_size=32, codebook_dim=3)
    with torch.no_grad():
        for vq in rvq.quantizers:  # non-zero biases, so the reference must carry them too
            vq.in_proj.bias.normal_()
            vq.out_proj.bias.normal_()
    stages = [
        (vq.in_proj.weight[..., 0], vq.in_proj.bias, vq.out_proj.weight[..., 0], vq.out_proj.bias, vq.codebook.weight)
        for vq in rvq.quantizers
    ]
    z = torch.randn(2, 6, 10)
    with torch.no_grad():
        out = rvq(z)
        for b in range(2):
            ref_codes, ref_decoded, ref_commitment = reference_rvq(z[b], stages)
            assert torch.equal(out.codes[b], ref_codes)
            torch.testing.assert_close(out.quantized[b], ref_decoded.sum(0))
            torch.testing.assert_close(rvq.decode(out.codes[b : b + 1])[0], ref_decoded.sum(0))
        assert torch.equal(rvq.encode(z), out.codes)


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


def train(codec: Codec, mel: MultiScaleMelLoss, wav: torch.Tensor, steps: int) -> tuple[list[float], list[float]]:
    """Adam on mel + VQ losses; the mel loss and stage-0 perplexity of every step."""
    opt = torch.optim.Adam(codec.parameters(), lr=5e-3)
    losses, usage = [], []
    for _ in range(steps):
        out = codec(wav)
        mel_loss = mel(out.recon, wav)
        loss = mel_loss + out.codebook_loss + 0.25 * out.commitment_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mel_loss.item())
        usage.append(codebook_usage(out.codes, codec.cfg.codebook_size)[0].item())
    return losses, usage


def test_tiny_codec_overfits_a_sine():
    torch.manual_seed(0)
    codec = Codec(CodecConfig(channels=8, strides=[2, 4, 5], latent_dim=16, n_q=4, codebook_size=64))
    mel = MultiScaleMelLoss(16000)
    wav = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(4000) / 16000).view(1, 1, -1)
    losses, _ = train(codec, mel, wav, steps=150)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def varied_signals(n: int, length: int, seed: int = 0, sample_rate: int = 16000):
    """n sines of log-uniform frequencies (60 Hz - 6 kHz), amplitudes and phases, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / sample_rate
    freqs = torch.empty(n, 1).uniform_(math.log(60), math.log(6000), generator=g).exp()
    amps = torch.empty(n, 1).uniform_(0.1, 0.8, generator=g)
    phases = 2 * math.pi * torch.rand(n, 1, generator=g)
    wav = amps * torch.sin(2 * math.pi * freqs * t + phases) + 0.05 * torch.randn(n, length, generator=g)
    return wav.view(n, 1, length)


def test_fresh_codec_uses_many_codes():
    # The plain VQ (near-zero codebooks, L2 lookup in the 32-d latent) starts collapsed here, at a
    # perplexity of 1-5; the cosine lookup in the 8-d projection spreads the frames over the codebook.
    torch.manual_seed(0)
    cfg = CodecConfig()
    codec = Codec(cfg)
    with torch.no_grad():
        codes = codec.encode(varied_signals(16, 8000))  # 400 frames
    usage = codebook_usage(codes, cfg.codebook_size)
    assert usage[0] > 32, usage
    assert (usage > 8).all(), usage


def test_short_training_keeps_codebook_in_use():
    # A regression check, not a guarantee: with torch's default conv biases this run collapses to
    # a perplexity of ~1 within 20 steps. Other seeds can still collapse (seed 1 does): the encoder
    # learns a latent offset shared by all frames, which no lookup metric can undo.
    torch.manual_seed(0)
    cfg = CodecConfig(channels=8, strides=[2, 4, 5], latent_dim=16, n_q=4, codebook_size=256)
    codec = Codec(cfg)
    mel = MultiScaleMelLoss(16000)
    t = torch.arange(2400) / 16000
    freqs = torch.tensor([110.0, 330.0, 700.0, 1500.0])
    g = torch.Generator().manual_seed(0)
    wav = (0.5 * torch.sin(2 * math.pi * freqs[:, None] * t) + 0.05 * torch.randn(4, 2400, generator=g)).unsqueeze(1)
    losses, usage = train(codec, mel, wav, steps=100)
    assert losses[-1] < 0.6 * losses[0], losses[::10]
    assert usage[0] > 16, usage[:1]
    assert min(usage[-20:]) > 5, usage[::10]  # of 240 frames; collapsed is ~1
