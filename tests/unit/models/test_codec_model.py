import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from aurora.models.codec import (
    INT16_CODES,
    Codec,
    CodecConfig,
    CodecOutput,
    ConvNeXtBlock,
    Decoder,
    Encoder,
    QuantizerOutput,
    ResidualVectorQuantizer,
    Snake1d,
    VectorQuantizer,
    activation,
    codebook_usage,
    draw_stages,
)
from aurora.losses.audio import MultiScaleMelLoss

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
        (dict(activation="relu"), "activation must be one of snake, elu"),
        (dict(decoder_channels=100), r"decoder_channels must be a positive multiple of 2 \*\* len\(strides\) = 16"),
        (dict(decoder_channels=8), "decoder_channels"),
        (dict(context_blocks=-1), "context_blocks"),
        (dict(quantizer_dropout=1.5), "quantizer_dropout"),
        (dict(quantizer_dropout=-0.1), "quantizer_dropout"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        CodecConfig(**overrides)


@pytest.mark.parametrize("strides", [[2, 4], [3, 5, 2], [4, 7]])
@pytest.mark.parametrize("extra", [{}, dict(activation="elu"), dict(context_blocks=2, decoder_channels=24)])
def test_encoder_decoder_lengths_are_exact(strides, extra):
    cfg = CodecConfig(**{**TINY, "strides": strides, **extra})
    frames = 6
    z = Encoder(cfg)(torch.randn(2, 1, frames * cfg.hop_length))
    assert z.shape == (2, cfg.latent_dim, frames)
    assert Decoder(cfg)(z).shape == (2, 1, frames * cfg.hop_length)


def test_bitrate():
    cfg = CodecConfig()  # 50 Hz, 4 codebooks of 256 entries (8 bits)
    assert cfg.bitrate() == 50 * 4 * 8 == 1600
    assert cfg.bitrate(n_q=1) == 400
    assert CodecConfig(codebook_size=1000).bitrate(2) == pytest.approx(100 * math.log2(1000))
    for bad in (0, 5):
        with pytest.raises(ValueError, match="n_q"):
            cfg.bitrate(bad)


def test_snake_is_dacs_formula():
    snake = Snake1d(3)
    assert snake.alpha.shape == (1, 3, 1) and torch.equal(snake.alpha.data, torch.ones(1, 3, 1))
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1))
    x = torch.randn(2, 3, 5)
    alpha = snake.alpha.detach()
    torch.testing.assert_close(snake(x), x + torch.sin(alpha * x) ** 2 / (alpha + 1e-9))
    with torch.no_grad():
        snake.alpha.zero_()  # the 1e-9 keeps it finite: sin(0)^2 / 1e-9 = 0
    assert torch.equal(snake(x), x)
    assert isinstance(activation("elu", 3), torch.nn.ELU)
    with pytest.raises(ValueError, match="activation"):
        activation("gelu", 3)


def test_convnext_block_starts_near_the_identity():
    torch.manual_seed(0)
    block = ConvNeXtBlock(16)
    x = torch.randn(2, 16, 9)
    y = block(x)
    assert y.shape == x.shape
    assert 0 < (y - x).abs().max() < 1e-4  # layer scale 1e-6
    y.sum().backward()
    assert block.gamma.grad.abs().sum() > 0 and block.dwconv.weight.grad is not None


def test_context_blocks_and_decoder_width():
    cfg = CodecConfig(**TINY, context_blocks=2, decoder_channels=24)
    codec = Codec(cfg)
    assert [b.dwconv.in_channels for b in codec.encoder.context] == [cfg.channels * 4] * 2
    assert [b.dwconv.in_channels for b in codec.decoder.context] == [24] * 2
    assert [b.block[1].in_channels for b in codec.decoder.blocks] == [24, 12]  # halved per block
    assert codec.decoder.head[1].in_channels == 6
    assert CodecConfig(**TINY).decoder_width == CodecConfig(**TINY).encoder_width == 16


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
    assert out.lookup_inputs.shape == (2, cfg.n_q, cfg.codebook_dim, frames)
    assert out.n_q_used.tolist() == [cfg.n_q, cfg.n_q]

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
    Returns codes [n_q, T], the per-stage decodings [n_q, D, T] and the per-stage losses [n_q]."""
    residual, codes, decoded, commitment = z.clone(), [], [], []
    for w_in, b_in, w_out, b_out, codebook in stages:
        w_in, b_in, w_out, b_out, codebook = (
            torch.as_tensor(a, dtype=torch.float) for a in (w_in, b_in, w_out, b_out, codebook)
        )
        z_e = w_in @ residual + b_in[:, None]  # [d, T]
        cosine = F.normalize(z_e, dim=0).t() @ F.normalize(codebook, dim=1).t()  # [T, K]
        stage_codes = cosine.argmax(1)
        z_q = codebook[stage_codes].t()  # [d, T]
        out = w_out @ z_q + b_out[:, None]
        commitment.append((z_e - z_q).square().mean())
        codes.append(stage_codes)
        decoded.append(out)
        residual = residual - out
    return torch.stack(codes), torch.stack(decoded), torch.stack(commitment)


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
    torch.testing.assert_close(out.commitment_loss, ref_commitment.sum())


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


@pytest.mark.parametrize("context_blocks", [0, 2])
def test_shard_units_are_the_codec_stages(context_blocks):
    codec = Codec(CodecConfig(**TINY, context_blocks=context_blocks))
    units = codec.shard_units()
    assert len(units) == 2 * len(TINY["strides"]) + 1 + 2 * context_blocks
    assert codec.quantizer in units
    assert all(block in units for block in [*codec.encoder.context, *codec.decoder.context])
    submodules = set(codec.modules())
    assert all(u in submodules for u in units)
    assert len({id(u) for u in units}) == len(units)


def test_state_dict_holds_only_parameters():
    codec = Codec(CodecConfig(**TINY))
    assert set(codec.state_dict()) == {name for name, _ in codec.named_parameters()}


def train(codec: Codec, mel: MultiScaleMelLoss, wav: torch.Tensor, steps: int,
          after_step=None) -> tuple[list[float], list[float]]:
    """Adam on mel + VQ losses; the mel loss and stage-0 perplexity of every step.
    ``after_step(step, out)`` runs after each update (1-based step)."""
    opt = torch.optim.Adam(codec.parameters(), lr=5e-3)
    losses, usage = [], []
    for step in range(1, steps + 1):
        out = codec(wav)
        mel_loss = mel(out.recon, wav)
        loss = mel_loss + out.codebook_loss + 0.25 * out.commitment_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(mel_loss.item())
        usage.append(codebook_usage(out.codes, codec.cfg.codebook_size)[0].item())
        if after_step is not None:
            after_step(step, out)
    return losses, usage


def test_tiny_codec_overfits_a_sine():
    torch.manual_seed(0)
    codec = Codec(CodecConfig(channels=8, strides=[2, 4, 5], latent_dim=16, n_q=4, codebook_size=64))
    mel = MultiScaleMelLoss(16000)
    wav = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(4000) / 16000).view(1, 1, -1)
    losses, _ = train(codec, mel, wav, steps=80)
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


def test_short_training_with_dead_code_reset_keeps_codebooks_in_use(world_of_one):
    """The task's dead-code reset (every 5 steps here) keeps a tiny codec's codebooks in use
    while it learns, whatever the seed. Without it this loop collapses on some seeds and CPUs
    (seed 1 reaches a stage-0 perplexity of 1.0 within 30 steps): the encoder learns a latent
    offset shared by all frames, which no lookup metric can undo. Over seeds 0-7 (AVX2 CPU,
    when this was written) the last 20 steps' lowest perplexity was 24.9 to 56 and the mel loss
    fell to 0.37-0.65 of its start; the thresholds leave a factor of 2 and more."""
    from aurora.config.schema import TrainConfig
    from aurora.engines import build_engine
    from aurora.tasks.codec.dead_codes import DeadCodeReset

    engine = build_engine(TrainConfig(), world_of_one)
    t = torch.arange(2400) / 16000
    freqs = torch.tensor([110.0, 330.0, 700.0, 1500.0])
    g = torch.Generator().manual_seed(0)
    wav = (0.5 * torch.sin(2 * math.pi * freqs[:, None] * t) + 0.05 * torch.randn(4, 2400, generator=g)).unsqueeze(1)
    for seed in range(3):
        torch.manual_seed(seed)
        cfg = CodecConfig(channels=8, strides=[2, 4, 5], latent_dim=16, n_q=4, codebook_size=256, activation="elu")
        codec = Codec(cfg)
        reset = DeadCodeReset(cfg.n_q, cfg.codebook_size, cfg.codebook_dim, every=5, seed=seed,
                              device=torch.device("cpu"))

        def maintain(step: int, out) -> None:
            reset.observe(out.codes, out.lookup_inputs)
            reset.maybe_reset(step, [vq.codebook.weight for vq in codec.quantizer.quantizers], engine)

        losses, usage = train(codec, MultiScaleMelLoss(16000), wav, steps=60, after_step=maintain)
        assert losses[-1] < 0.8 * losses[0], (seed, losses[::10])
        assert usage[0] > 16, (seed, usage[:1])
        assert min(usage[-20:]) > 12, (seed, usage[::10])  # of 240 frames; collapsed is ~1


# --- residual quantization round trip and quantizer dropout ---------------------------------------


def random_rvq(n_q=4, seed=0):
    torch.manual_seed(seed)
    rvq = ResidualVectorQuantizer(dim=6, n_q=n_q, codebook_size=32, codebook_dim=3)
    with torch.no_grad():
        for vq in rvq.quantizers:
            vq.in_proj.bias.normal_()
            vq.out_proj.bias.normal_()
    return rvq


def test_decode_of_encode_is_the_forward_value():
    rvq = random_rvq().eval()
    z = torch.randn(3, 6, 7)
    with torch.no_grad():
        out = rvq(z)
        codes = rvq.encode(z)
        assert torch.equal(codes, out.codes)
        torch.testing.assert_close(rvq.decode(codes), out.quantized)
        for k in (1, 2):
            partial = rvq(z, n_q=k)
            assert torch.equal(rvq.encode(z, n_q=k), codes[:, :k])
            assert partial.n_q_used.tolist() == [k] * 3
            assert torch.equal(partial.codes, codes)  # every stage still runs and reports its codes
            torch.testing.assert_close(rvq.decode(codes[:, :k]), partial.quantized)


def test_single_codebook_output():
    vq = VectorQuantizer(6, 32, 3)
    x = torch.randn(2, 6, 5)
    out = vq(x)
    assert isinstance(out, QuantizerOutput)
    assert out.codes.shape == (2, 5) and out.lookup_inputs.shape == (2, 3, 5)
    assert out.commitment_loss.shape == () and out.n_q_used.tolist() == [1, 1]
    per_item = vq(x, per_item=True)
    assert per_item.commitment_loss.shape == per_item.codebook_loss.shape == (2,)
    torch.testing.assert_close(per_item.commitment_loss.mean(), out.commitment_loss)


def test_quantizer_dropout_uses_only_the_first_k_stages():
    rvq = random_rvq(n_q=4).train()
    stages = [
        (vq.in_proj.weight[..., 0], vq.in_proj.bias, vq.out_proj.weight[..., 0], vq.out_proj.bias, vq.codebook.weight)
        for vq in rvq.quantizers
    ]
    z = torch.randn(12, 6, 5)
    out = rvq(z, dropout=1.0, generator=torch.Generator().manual_seed(0))
    k = out.n_q_used
    assert k.dtype == torch.long and k.shape == (12,)
    assert k.min() >= 1 and k.max() <= 4 and k.min() < 4 and len(set(k.tolist())) > 1
    # The same generator state draws the same stages (e.g. on every rank).
    again = rvq(z, dropout=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.n_q_used, k)

    with torch.no_grad():
        assert torch.equal(out.codes, rvq.encode(z))  # every stage's codes, used or not
        expected_commitment = 0.0
        for b in range(12):
            n = int(k[b])
            torch.testing.assert_close(out.quantized[b], rvq.decode(out.codes[b : b + 1, :n])[0])
            ref_codes, ref_decoded, ref_losses = reference_rvq(z[b], stages)
            assert torch.equal(out.codes[b], ref_codes)
            torch.testing.assert_close(out.quantized[b], ref_decoded[:n].sum(0))
            # DAC: each stage's loss is the batch mean of the per-item loss, 0 for items skipping it.
            expected_commitment = expected_commitment + ref_losses[:n].sum() / 12
    torch.testing.assert_close(out.commitment_loss, expected_commitment)
    torch.testing.assert_close(out.codebook_loss, expected_commitment)

    # A stage no item uses gets no gradient, neither through `quantized` nor through the losses.
    (out.quantized.square().sum() + out.codebook_loss + out.commitment_loss).backward()
    for stage, vq in enumerate(rvq.quantizers):
        grads = [vq.codebook.weight.grad, vq.out_proj.parametrizations.weight.original1.grad]
        if stage < k.max():
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_quantizer_dropout_respects_n_q_and_its_probability():
    rvq = random_rvq(n_q=4).train()
    z = torch.randn(64, 6, 2)
    g = torch.Generator().manual_seed(1)
    assert rvq(z, n_q=2, dropout=1.0, generator=g).n_q_used.max() <= 2
    assert rvq(z, dropout=0.0, generator=g).n_q_used.tolist() == [4] * 64
    half = rvq(z, dropout=0.5, generator=g).n_q_used
    assert 0 < (half < 4).sum() < 64  # about 3/8 of 64: half drop, and 1/4 of those draw k = 4
    rvq.eval()  # dropout is for training only
    assert rvq(z, dropout=1.0, generator=g).n_q_used.tolist() == [4] * 64
    with pytest.raises(ValueError, match="dropout"):
        rvq(z, dropout=1.5)
    with pytest.raises(ValueError, match="n_q"):
        rvq(z, n_q=5)


def test_codec_applies_quantizer_dropout_in_training_only():
    torch.manual_seed(0)
    codec = Codec(CodecConfig(**TINY, quantizer_dropout=1.0))
    wav = torch.randn(8, 1, 40)
    out = codec(wav, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, CodecOutput) and out.n_q_used.min() < TINY["n_q"]
    assert out.codes.shape == (8, TINY["n_q"], 5)  # all stages' codes (dead-code tracking counts them)
    codec.eval()
    with torch.no_grad():
        assert codec(wav).n_q_used.tolist() == [TINY["n_q"]] * 8
        assert codec(wav, n_q=1).n_q_used.tolist() == [1] * 8
        torch.testing.assert_close(codec(wav, n_q=2).recon, codec.decode(codec.encode(wav, n_q=2))[..., :40])


# --- the presets of configs/codec ---------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "codec"
PRESET_MODELS = {  # the model sections of configs/codec/*.yaml, for a file not there yet
    "tiny": dict(sample_rate=16000, channels=16, strides=[2, 4, 5, 8], residual_units=1, latent_dim=32, n_q=4,
                 codebook_size=256, codebook_dim=8, activation="snake", context_blocks=1, quantizer_dropout=0.5),
    "speech_16k": dict(sample_rate=16000, channels=64, strides=[2, 4, 5, 8], residual_units=3, latent_dim=1024,
                       decoder_channels=1536, n_q=12, codebook_size=1024, codebook_dim=8, activation="snake",
                       quantizer_dropout=0.5),
    "general_24k": dict(sample_rate=24000, channels=64, strides=[2, 4, 5, 8], residual_units=3, latent_dim=1024,
                        decoder_channels=1536, n_q=8, codebook_size=1024, codebook_dim=8, context_blocks=2,
                        quantizer_dropout=0.5),
    "music_44k": dict(sample_rate=44100, channels=64, strides=[2, 4, 8, 8], residual_units=3, latent_dim=1024,
                      decoder_channels=1536, n_q=9, codebook_size=1024, codebook_dim=8, quantizer_dropout=0.5),
}
# DAC 44kHz (descript-audio-codec: encoder_dim 64, rates 2 4 8 8, decoder_dim 1536, 9 x 1024 x 8):
# this generator is DAC's module for module, weight-norm gains included, so it counts exactly the
# parameters of `dac.model.DAC(...)` (checked against descript-audio-codec: 22,307,968 encoder,
# 239,760 quantizer, 54,104,162 decoder); DAC's 16 kHz model (rates 2 4 5 8, 12 codebooks) has
# 74,175,906. DAC's decoder ends in a tanh, which has no parameters and which this one leaves out.
DAC_44K_PARAMS = 76_651_890
DAC_16K_PARAMS = 74_175_906


def preset(name: str) -> CodecConfig:
    path = CONFIGS / f"{name}.yaml"
    section = OmegaConf.load(path).model if path.exists() else PRESET_MODELS[name]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CodecConfig), section))


@functools.cache
def meta_codec(cfg_yaml: str) -> Codec:
    """A codec on the meta device (shapes, no storage), built once per config."""
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CodecConfig), OmegaConf.create(cfg_yaml)))
    with torch.device("meta"):
        return Codec(cfg)


def meta(cfg: CodecConfig | dict) -> Codec:
    return meta_codec(OmegaConf.to_yaml(OmegaConf.structured(cfg) if isinstance(cfg, CodecConfig) else cfg))


@pytest.mark.parametrize(
    "name, hop, frame_rate, kbps",
    [("tiny", 320, 50.0, 1.6), ("speech_16k", 320, 50.0, 6.0), ("general_24k", 320, 75.0, 6.0),
     ("music_44k", 512, 86.13, 7.75)],
)
def test_preset_shapes_and_rates(name, hop, frame_rate, kbps):
    cfg = preset(name)
    assert cfg.hop_length == hop
    assert cfg.frame_rate == pytest.approx(frame_rate, abs=0.005)
    assert cfg.bitrate() / 1000 == pytest.approx(kbps, abs=0.005)
    assert cfg.n_q * math.log2(cfg.codebook_size) <= 16 * cfg.n_q and cfg.codebook_size <= INT16_CODES
    codec = meta(cfg)  # shapes without allocating
    with torch.device("meta"):
        z = codec.encoder(torch.empty(2, 1, 3 * hop))
        assert z.shape == (2, cfg.latent_dim, 3)
        assert codec.decoder(z).shape == (2, 1, 3 * hop)
        wav = torch.empty(2, 1, 3 * hop + 1)
        out = codec(wav)
    assert out.recon.shape == wav.shape
    assert out.codes.shape == (2, cfg.n_q, 4)
    assert out.lookup_inputs.shape == (2, cfg.n_q, cfg.codebook_dim, 4)
    assert out.n_q_used.shape == (2,)
    assert codec.encoder.head[1].in_channels == cfg.encoder_width == cfg.channels * 2 ** len(cfg.strides)
    assert codec.decoder.stem.out_channels == cfg.decoder_width
    assert len(codec.encoder.context) == len(codec.decoder.context) == cfg.context_blocks
    assert len(codec.shard_units()) == 2 * len(cfg.strides) + 1 + 2 * cfg.context_blocks


def test_dac_sized_presets_have_dacs_parameter_count():
    codec = meta(preset("music_44k"))
    dac_44k = meta(PRESET_MODELS["music_44k"])
    dac_16k = meta(PRESET_MODELS["speech_16k"])

    def count(module):
        return sum(p.numel() for p in module.parameters())

    parts = (count(dac_44k.encoder), count(dac_44k.quantizer), count(dac_44k.decoder))
    assert parts == (22_307_968, 239_760, 54_104_162)
    assert count(dac_44k) == DAC_44K_PARAMS
    assert count(dac_16k) == DAC_16K_PARAMS
    # The preset file may tune details but stays DAC-sized (one pair of context blocks, 8.4M at the
    # encoder's 1024 channels and 18.9M at the decoder's 1536, would not).
    assert 0.95 * DAC_44K_PARAMS < count(codec) < 1.15 * DAC_44K_PARAMS, count(codec)


def test_tiny_preset_trains_a_step():
    torch.manual_seed(0)
    cfg = preset("tiny")
    codec = Codec(cfg)
    wav = 0.5 * torch.randn(4, 1, 3200 + 7)  # 0.2 s and a partial frame
    out = codec(wav, generator=torch.Generator().manual_seed(0))
    assert out.recon.shape == wav.shape and torch.isfinite(out.recon).all()
    assert out.codes.shape == (4, cfg.n_q, 11)
    assert (1 <= out.n_q_used).all() and (out.n_q_used <= cfg.n_q).all()
    (out.recon.abs().mean() + out.commitment_loss + out.codebook_loss).backward()
    assert codec.encoder.stem.parametrizations.weight.original1.grad.abs().sum() > 0
    assert all(p.grad is not None for p in codec.decoder.parameters())


def test_draw_stages():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert draw_stages(5, 4, 0.0, g).tolist() == [4] * 5
    assert torch.equal(g.get_state(), state)  # no dropout, no draw
    a = draw_stages(1000, 4, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, draw_stages(1000, 4, 0.5, torch.Generator().manual_seed(3)))
    assert set(a.tolist()) == {1, 2, 3, 4}
    assert 0.3 < (a < 4).float().mean() < 0.45  # 1/2 dropped, 3/4 of those below 4: 3/8
    with pytest.raises(ValueError, match="dropout"):
        draw_stages(2, 4, -0.5)


def test_explicit_stage_counts():
    rvq = random_rvq(n_q=4).eval()
    z = torch.randn(3, 6, 5)
    out = rvq(z, n_q_used=torch.tensor([1, 4, 2]))
    assert out.n_q_used.tolist() == [1, 4, 2]
    for b, k in enumerate([1, 4, 2]):
        torch.testing.assert_close(out.quantized[b], rvq.decode(out.codes[b : b + 1, :k])[0])
    with pytest.raises(ValueError, match="one stage count per batch item"):
        rvq(z, n_q_used=torch.tensor([1, 2]))


def test_quantizer_dropout_survives_activation_checkpointing():
    # Engines checkpoint each shard unit, the quantizer among them, and rerun its forward in the
    # backward pass: the dropout draw must not be repeated there (a generator is not rewound).
    from torch.distributed._composable import checkpoint

    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        codec = Codec(CodecConfig(**TINY, quantizer_dropout=1.0))
        if checkpointed:
            checkpoint(codec.quantizer)
        out = codec(torch.randn(6, 1, 40), generator=torch.Generator().manual_seed(0))
        (out.recon.square().mean() + out.commitment_loss + out.codebook_loss).backward()
        grads.append([p.grad.clone() for p in codec.quantizer.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
