"""The codec's config and the generator it describes: encoder, residual quantizer, decoder."""

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.models.codec.generator import Decoder, Encoder
from aurora.models.codec.layers import ACTIVATIONS
from aurora.models.codec.quantizer import ResidualVectorQuantizer, draw_stages

INT16_CODES = 2**15
"""Token shards store codes as int16, so a codebook may hold at most this many entries."""


@dataclass
class CodecConfig:
    sample_rate: int = 16000
    """Sample rate of the (mono) audio in Hz."""
    channels: int = 16
    """Width of the encoder's first conv; every downsampling block doubles it."""
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])
    """Downsampling factor of each encoder block (the decoder upsamples in reverse order)."""
    residual_units: int = 1
    """Dilated residual units per encoder/decoder block (dilations 1, 3, 9, ...); DAC uses 3."""
    latent_dim: int = 32
    """Channels of the latent the quantizer sees (each stage projects it to codebook_dim and back)."""
    n_q: int = 4
    """Number of residual quantizer stages (codebooks)."""
    codebook_size: int = 256
    """Entries per codebook; codes lie in [0, codebook_size)."""
    codebook_dim: int = 8
    """Dimension of the low-dimensional lookup space: each stage projects the latent to it, looks
    up the nearest code by cosine similarity there, and projects the code back (DAC's factorized codes)."""
    activation: str = "snake"
    """Nonlinearity of the encoder and decoder: "snake" (DAC, a learnable periodic one per channel)
    or "elu" (EnCodec)."""
    decoder_channels: int | None = None
    """Width of the decoder's first conv; every upsampling block halves it, so it must be divisible
    by 2 ** len(strides). None mirrors the encoder (channels * 2 ** len(strides)); DAC widens it
    (1536 against an encoder ending at 1024): the decoder carries most of the quality."""
    context_blocks: int = 0
    """ConvNeXt blocks (EVA-GAN's context-aware module) at the lowest temporal resolution: this many
    at the end of the encoder, before its head, and as many at the start of the decoder, after its
    stem. 0 for none."""
    quantizer_dropout: float = 0.0
    """Probability, per batch item and training step, that the item uses only its first k
    quantizer stages (k uniform in 1..n_q) (DAC: 0.5), so one model serves every bitrate. Only in
    training mode."""

    def __post_init__(self):
        positive = ("sample_rate", "channels", "residual_units", "latent_dim", "n_q", "codebook_dim")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"CodecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.strides:
            raise ValueError("CodecConfig.strides must name at least one downsampling block")
        if any(s < 2 for s in self.strides):
            raise ValueError(f"CodecConfig.strides must all be >= 2, got {self.strides}")
        if not 2 <= self.codebook_size <= INT16_CODES:
            raise ValueError(
                f"CodecConfig.codebook_size must be in [2, {INT16_CODES}] (codes are stored as int16), "
                f"got {self.codebook_size}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"CodecConfig.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.decoder_channels is not None:
            halvings = 2 ** len(self.strides)
            if self.decoder_channels < halvings or self.decoder_channels % halvings:
                raise ValueError(
                    f"CodecConfig.decoder_channels must be a positive multiple of 2 ** len(strides) = "
                    f"{halvings} (each of the {len(self.strides)} upsampling blocks halves it), "
                    f"got {self.decoder_channels}; pick a multiple or leave it null to mirror the encoder"
                )
        if self.context_blocks < 0:
            raise ValueError(f"CodecConfig.context_blocks must be >= 0 (0 for none), got {self.context_blocks}")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ValueError(
                f"CodecConfig.quantizer_dropout is a probability and must be in [0, 1], got {self.quantizer_dropout}"
            )

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Latent frames (and code columns) per second."""
        return self.sample_rate / self.hop_length

    @property
    def encoder_width(self) -> int:
        """Channels at the end of the encoder (where its context blocks run)."""
        return self.channels * 2 ** len(self.strides)

    @property
    def decoder_width(self) -> int:
        """Channels at the start of the decoder (where its context blocks run)."""
        return self.encoder_width if self.decoder_channels is None else self.decoder_channels

    def bitrate(self, n_q: int | None = None) -> float:
        """Bits per second of the codes of the first n_q stages (all by default):
        frame_rate * n_q * log2(codebook_size)."""
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n_q}")
        return self.frame_rate * n_q * math.log2(self.codebook_size)


class CodecOutput(NamedTuple):
    recon: Tensor
    """[B, 1, S] reconstruction, the same length as the input."""
    codes: Tensor
    """[B, n_q, ceil(S / hop_length)] long, every stage (also those quantizer dropout skipped)."""
    commitment_loss: Tensor
    """Scalar, summed over quantizer stages."""
    codebook_loss: Tensor
    """Scalar, summed over quantizer stages."""
    lookup_inputs: Tensor
    """[B, n_q, codebook_dim, T] detached inputs of each stage's lookup."""
    n_q_used: Tensor
    """[B] long: quantizer stages that made up each item's reconstruction."""


class Codec(nn.Module):
    """wav [B, 1, S] -> Encoder -> z [B, latent_dim, T] -> ResidualVectorQuantizer -> codes [B, n_q, T]
                                                                              -> z_q -> Decoder -> wav

    with T = ceil(S / hop_length) (the input is right-padded with zeros to whole frames).
    """

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.latent_dim, cfg.n_q, cfg.codebook_size, cfg.codebook_dim)
        self.decoder = Decoder(cfg)

    def _pad(self, wav: Tensor) -> Tensor:
        """Right-pad [B, 1, S] with zeros to a whole number of frames."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio [B, 1, S], got shape {tuple(wav.shape)}")
        return F.pad(wav, (0, -wav.shape[-1] % self.cfg.hop_length))

    def forward(self, wav: Tensor, n_q: int | None = None,
                generator: torch.Generator | None = None) -> CodecOutput:
        """Reconstruct wav through the first n_q quantizer stages (all by default). In training
        mode, cfg.quantizer_dropout applies, drawn from `generator` or else the global RNG of wav's
        device (see `draw_stages`)."""
        n_q = self.cfg.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.cfg.n_q:
            raise ValueError(f"n_q must be in [1, {self.cfg.n_q}], got {n_q}")
        # Drawn here rather than in the quantizer: an engine that checkpoints the quantizer (a shard
        # unit) reruns its forward in the backward pass, and would draw again from `generator`.
        dropout = self.cfg.quantizer_dropout if self.training else 0.0
        n_q_used = draw_stages(wav.shape[0], n_q, dropout, generator, wav.device)
        q = self.quantizer(self.encoder(self._pad(wav)), n_q, n_q_used=n_q_used)
        recon = self.decoder(q.quantized)[..., : wav.shape[-1]]
        return CodecOutput(recon, q.codes, q.commitment_loss, q.codebook_loss, q.lookup_inputs, q.n_q_used)

    def latents(self, wav: Tensor) -> Tensor:
        """wav [B, 1, S] -> the continuous latents before quantization [B, latent_dim, ceil(S / hop_length)]
        (what a latent diffusion model learns; ``decode_latents`` turns them back into audio)."""
        return self.encoder(self._pad(wav))

    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """wav [B, 1, S] -> codes [B, n_q, ceil(S / hop_length)] long."""
        return self.quantizer.encode(self.latents(wav), n_q)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """latents [B, latent_dim, T] -> wav [B, 1, T * hop_length], through every quantizer
        stage (the decoder was trained on quantized latents: generated ones are snapped to the
        nearest codes first)."""
        return self.decode(self.quantizer.encode(latents))

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, T] (k <= n_q) -> wav [B, 1, T * hop_length]."""
        return self.decoder(self.quantizer.decode(codes))

    def shard_units(self) -> list[nn.Module]:
        """Submodules an FSDP engine wraps one by one: each codec stage (encoder blocks and context
        blocks, the quantizer, decoder context blocks and blocks); the stems and heads stay with
        the root.

        `encode`/`decode` call the quantizer's methods rather than its forward, so an engine that
        runs them on a sharded codec must register those methods (FSDP2:
        `register_fsdp_forward_method`).
        """
        return [*self.encoder.blocks, *self.encoder.context, self.quantizer,
                *self.decoder.context, *self.decoder.blocks]
