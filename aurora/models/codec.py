"""A small residual-vector-quantized (RVQ) audio codec: SEANet-style encoder, RVQ, mirrored decoder.

The walking skeleton of the EnCodec / DAC family, without the GAN:

    wav [B, 1, S] -> Encoder -> z [B, D, T] -> ResidualVectorQuantizer -> codes [B, n_q, T]
                                                                       -> z_q [B, D, T] -> Decoder -> wav

with T = S / hop_length and hop_length = prod(strides). Each quantizer stage uses DAC's factorized,
l2-normalized codes (Kumar et al. 2023): the nearest-neighbour lookup runs by cosine similarity in a
low-dimensional projection of the latent, where an N(0, 1) codebook covers all directions.
Discriminators, Snake activations, quantizer dropout and dead-code re-initialisation come later: the
activation has one seam (`_activation`) and each quantizer stage is its own module.
"""

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

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
    """Dilated residual units per encoder/decoder block (dilations 1, 3, 9, ...)."""
    latent_dim: int = 32
    """Channels of the latent the quantizer sees (each stage projects it to codebook_dim and back)."""
    n_q: int = 4
    """Number of residual quantizer stages (codebooks)."""
    codebook_size: int = 256
    """Entries per codebook; codes lie in [0, codebook_size)."""
    codebook_dim: int = 8
    """Dimension of the low-dimensional lookup space: each stage projects the latent to it, looks
    up the nearest code by cosine similarity there, and projects the code back (DAC's factorized codes)."""

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

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Latent frames (and code columns) per second."""
        return self.sample_rate / self.hop_length


def _conv(*args, **kwargs) -> nn.Module:
    # Zero bias, as DAC's `init_weights` leaves every Conv1d (its weight re-init is a no-op under
    # weight norm). With torch's default biases the constant offsets dominate the small latent of a
    # fresh encoder: every frame points the same way and the lookup picks one code for nearly all.
    conv = nn.Conv1d(*args, **kwargs)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return weight_norm(conv)


def _conv_transpose(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def _activation(channels: int) -> nn.Module:
    # The one place the nonlinearity is chosen; Snake, which is per-channel, will replace ELU here.
    return nn.ELU()


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            _activation(dim),
            _conv(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            _activation(dim),
            _conv(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_units(dim: int, n: int) -> list[nn.Module]:
    return [ResidualUnit(dim, dilation=3**i) for i in range(n)]


# Kernel 2*stride with padding ceil(stride/2) (and output_padding stride % 2 when upsampling)
# maps length L to exactly L / stride and back to exactly L * stride, for every stride >= 2.


class EncoderBlock(nn.Module):
    """Residual units at `dim`, then a strided conv to 2 * dim channels and 1/stride the length."""

    def __init__(self, dim: int, stride: int, residual_units: int):
        super().__init__()
        self.block = nn.Sequential(
            *_residual_units(dim, residual_units),
            _activation(dim),
            _conv(dim, 2 * dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """A transposed conv to dim // 2 channels and stride times the length, then residual units."""

    def __init__(self, dim: int, stride: int, residual_units: int):
        super().__init__()
        self.block = nn.Sequential(
            _activation(dim),
            _conv_transpose(
                dim,
                dim // 2,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
                output_padding=stride % 2,
            ),
            *_residual_units(dim // 2, residual_units),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """wav [B, 1, T * hop] -> latent [B, latent_dim, T]. The length must be a multiple of hop."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.stem = _conv(1, cfg.channels, kernel_size=7, padding=3)
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.channels * 2**i, stride, cfg.residual_units) for i, stride in enumerate(cfg.strides)
        )
        width = cfg.channels * 2 ** len(cfg.strides)
        self.head = nn.Sequential(_activation(width), _conv(width, cfg.latent_dim, kernel_size=3, padding=1))

    def forward(self, wav: Tensor) -> Tensor:
        x = self.stem(wav)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Decoder(nn.Module):
    """latent [B, latent_dim, T] -> wav [B, 1, T * hop], mirroring the Encoder."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        width = cfg.channels * 2 ** len(cfg.strides)
        self.stem = _conv(cfg.latent_dim, width, kernel_size=7, padding=3)
        self.blocks = nn.ModuleList(
            DecoderBlock(width // 2**i, stride, cfg.residual_units) for i, stride in enumerate(reversed(cfg.strides))
        )
        self.head = nn.Sequential(_activation(cfg.channels), _conv(cfg.channels, 1, kernel_size=7, padding=3))

    def forward(self, z: Tensor) -> Tensor:
        x = self.stem(z)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class QuantizerOutput(NamedTuple):
    # A NamedTuple (not a dataclass) because it is a pytree: FSDP2 finds the tensors in a
    # module's output to hook the backward pass, and cannot see inside a plain dataclass.
    quantized: Tensor
    """[B, D, T] quantized latent; in the forward pass it carries the straight-through gradient."""
    codes: Tensor
    """[B, T] (one codebook) or [B, n_q, T] (residual stack), long."""
    commitment_loss: Tensor
    """Scalar: mse(z_e, z_q.detach()) in the lookup space, pulls the encoder towards its codes.
    Summed over stages."""
    codebook_loss: Tensor
    """Scalar: mse(z_q, z_e.detach()) in the lookup space, pulls the codes towards the encoder.
    Summed over stages."""
    lookup_inputs: Tensor
    """Detached z_e, what the lookup compared with the codebook: [B, codebook_dim, T] (one
    codebook) or [B, n_q, codebook_dim, T]. Fresh codes for dead entries are drawn from it."""


class VectorQuantizer(nn.Module):
    """One codebook with DAC's factorized, l2-normalized codes (Improved VQGAN, Yu et al. 2021):

        x [B, D, T] -> in_proj -> z_e [B, codebook_dim, T] -> nearest code by cosine similarity
                    -> z_q = codebook[code] -> out_proj -> [B, D, T]

    The lookup compares directions only (both sides l2-normalized), so a code is never out of reach
    because of its length, and the N(0, 1) codebook spreads its entries over the whole sphere of the
    low-dimensional space; z_q itself is the unnormalized codebook row, as in DAC. The losses are
    measured in the lookup space, and the straight-through gradient reaches x through both projections.
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int = 8):
        super().__init__()
        self.in_proj = _conv(dim, codebook_dim, kernel_size=1)
        self.out_proj = _conv(codebook_dim, dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)  # N(0, 1) init

    def _lookup(self, z_e: Tensor) -> Tensor:
        """z_e [B, codebook_dim, T] -> codes [B, T] of the codebook rows nearest in direction."""
        b, d, t = z_e.shape
        # Under autocast the matmul would run in bf16, whose rounding flips near-tied assignments.
        with torch.autocast(z_e.device.type, enabled=False):
            flat = F.normalize(z_e.transpose(1, 2).reshape(-1, d).float(), dim=1)
            codebook = F.normalize(self.codebook.weight.float(), dim=1)
            # L2 distance between unit vectors: 2 - 2 * cosine similarity.
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)
        return dist.argmin(1).view(b, t)

    def encode(self, x: Tensor) -> Tensor:
        """[B, D, T] -> codes [B, T] of the codebook rows nearest to in_proj(x) by cosine similarity."""
        return self._lookup(self.in_proj(x))

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, T] -> out_proj(codebook rows) [B, D, T]."""
        return self.out_proj(self.codebook(codes).transpose(1, 2))

    def forward(self, x: Tensor) -> QuantizerOutput:
        z_e = self.in_proj(x)
        codes = self._lookup(z_e)
        z_q = self.codebook(codes).transpose(1, 2)
        commitment_loss = F.mse_loss(z_e, z_q.detach())
        codebook_loss = F.mse_loss(z_q, z_e.detach())
        z_q = z_e + (z_q - z_e).detach()  # the code's value, the gradient of z_e (straight-through)
        return QuantizerOutput(self.out_proj(z_q), codes, commitment_loss, codebook_loss, z_e.detach())


class ResidualVectorQuantizer(nn.Module):
    """n_q vector quantizers, each quantizing what the previous ones left over.

    The losses are summed over stages (as in DAC), so a task's loss weights apply per stage.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, codebook_dim: int = 8):
        super().__init__()
        self.quantizers = nn.ModuleList(VectorQuantizer(dim, codebook_size, codebook_dim) for _ in range(n_q))

    def forward(self, z: Tensor) -> QuantizerOutput:
        quantized = torch.zeros_like(z)
        residual = z
        codes, lookup_inputs, commitment_loss, codebook_loss = [], [], 0.0, 0.0
        for vq in self.quantizers:
            out = vq(residual)
            # out.quantized has the value of the decoded code and reaches `residual` through the
            # stage's projections with a straight-through gradient across the lookup.
            residual = residual - out.quantized
            quantized = quantized + out.quantized
            codes.append(out.codes)
            lookup_inputs.append(out.lookup_inputs)
            commitment_loss = commitment_loss + out.commitment_loss
            codebook_loss = codebook_loss + out.codebook_loss
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), commitment_loss, codebook_loss,
                               torch.stack(lookup_inputs, dim=1))

    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """z [B, D, T] -> codes [B, n_q, T] from the first n_q stages (all by default)."""
        n_q = len(self.quantizers) if n_q is None else n_q
        if not 1 <= n_q <= len(self.quantizers):
            raise ValueError(f"n_q must be in [1, {len(self.quantizers)}], got {n_q}")
        residual, codes = z, []
        for vq in self.quantizers[:n_q]:
            codes.append(vq.encode(residual))
            residual = residual - vq.decode(codes[-1])
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, T] -> z [B, D, T]: the sum of the first k stages' decoded codes."""
        if not 1 <= codes.shape[1] <= len(self.quantizers):
            raise ValueError(f"codes must have 1 to {len(self.quantizers)} stages, got shape {tuple(codes.shape)}")
        return sum(vq.decode(codes[:, i]) for i, vq in enumerate(self.quantizers[: codes.shape[1]]))


def codebook_usage(codes: Tensor, codebook_size: int) -> Tensor:
    """Perplexity of each stage's code distribution in codes [B, n_q, T] -> [n_q].

    codebook_size when every entry is used equally often, 1 when a stage collapsed to one entry.
    """
    n_q = codes.shape[1]
    per_stage = codes.transpose(0, 1).reshape(n_q, -1)
    offsets = torch.arange(n_q, device=codes.device)[:, None] * codebook_size
    counts = torch.bincount((per_stage + offsets).flatten(), minlength=n_q * codebook_size)
    p = counts.view(n_q, codebook_size).float()
    p = p / p.sum(1, keepdim=True)
    return torch.exp(-torch.special.xlogy(p, p).sum(1))


class CodecOutput(NamedTuple):
    recon: Tensor
    """[B, 1, S] reconstruction, the same length as the input."""
    codes: Tensor
    """[B, n_q, ceil(S / hop_length)] long."""
    commitment_loss: Tensor
    """Scalar, summed over quantizer stages."""
    codebook_loss: Tensor
    """Scalar, summed over quantizer stages."""
    lookup_inputs: Tensor
    """[B, n_q, codebook_dim, T] detached inputs of each stage's lookup."""


class Codec(nn.Module):
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

    def forward(self, wav: Tensor) -> CodecOutput:
        q = self.quantizer(self.encoder(self._pad(wav)))
        recon = self.decoder(q.quantized)[..., : wav.shape[-1]]
        return CodecOutput(recon, q.codes, q.commitment_loss, q.codebook_loss, q.lookup_inputs)

    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """wav [B, 1, S] -> codes [B, n_q, ceil(S / hop_length)] long."""
        return self.quantizer.encode(self.encoder(self._pad(wav)), n_q)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, T] (k <= n_q) -> wav [B, 1, T * hop_length]."""
        return self.decoder(self.quantizer.decode(codes))

    def shard_units(self) -> list[nn.Module]:
        """Submodules an FSDP engine wraps one by one: each codec stage (encoder blocks, the
        quantizer, decoder blocks); the stems and heads stay with the root.

        `encode`/`decode` call the quantizer's methods rather than its forward, so an engine that
        runs them on a sharded codec must register those methods (FSDP2:
        `register_fsdp_forward_method`).
        """
        return [*self.encoder.blocks, self.quantizer, *self.decoder.blocks]
