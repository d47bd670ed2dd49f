"""The codec's SEANet / DAC-style encoder and decoder.

    Encoder: stem conv -> [residual units, strided conv (x2 channels)] per stride
             -> context blocks -> activation, conv to latent_dim
    Decoder: conv from latent_dim -> context blocks
             -> [transposed conv (/2 channels), residual units] per stride (reversed) -> activation, conv to 1

The context blocks (EVA-GAN's context-aware module, ConvNeXt blocks) sit where the temporal
resolution is lowest, so their 7-frame kernels see the widest span of audio.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor, nn

from aurora.models.codec.layers import ConvNeXtBlock, activation, conv1d, conv_transpose1d

if TYPE_CHECKING:
    from aurora.models.codec.codec import CodecConfig


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int, act: str):
        super().__init__()
        self.block = nn.Sequential(
            activation(act, dim),
            conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            activation(act, dim),
            conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_units(dim: int, n: int, act: str) -> list[nn.Module]:
    return [ResidualUnit(dim, dilation=3**i, act=act) for i in range(n)]


# Kernel 2*stride with padding ceil(stride/2) (and output_padding stride % 2 when upsampling)
# maps length L to exactly L / stride and back to exactly L * stride, for every stride >= 2.


class EncoderBlock(nn.Module):
    """Residual units at `dim`, then a strided conv to out_dim channels and 1/stride the length."""

    def __init__(self, dim: int, out_dim: int, stride: int, residual_units: int, act: str):
        super().__init__()
        self.block = nn.Sequential(
            *_residual_units(dim, residual_units, act),
            activation(act, dim),
            conv1d(dim, out_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """A transposed conv to out_dim channels and stride times the length, then residual units."""

    def __init__(self, dim: int, out_dim: int, stride: int, residual_units: int, act: str):
        super().__init__()
        self.block = nn.Sequential(
            activation(act, dim),
            conv_transpose1d(
                dim,
                out_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
                output_padding=stride % 2,
            ),
            *_residual_units(out_dim, residual_units, act),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """wav [B, 1, T * hop] -> latent [B, latent_dim, T]. The length must be a multiple of hop."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.stem = conv1d(1, cfg.channels, kernel_size=7, padding=3)
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.channels * 2**i, cfg.channels * 2 ** (i + 1), stride, cfg.residual_units, cfg.activation)
            for i, stride in enumerate(cfg.strides)
        )
        width = cfg.encoder_width
        self.context = nn.ModuleList(ConvNeXtBlock(width) for _ in range(cfg.context_blocks))
        self.head = nn.Sequential(activation(cfg.activation, width),
                                  conv1d(width, cfg.latent_dim, kernel_size=3, padding=1))

    def forward(self, wav: Tensor) -> Tensor:
        x = self.stem(wav)
        for block in self.blocks:
            x = block(x)
        for block in self.context:
            x = block(x)
        return self.head(x)


class Decoder(nn.Module):
    """latent [B, latent_dim, T] -> wav [B, 1, T * hop]: the Encoder in reverse, starting at
    decoder_width channels and halving them in every upsampling block."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        width = cfg.decoder_width
        self.stem = conv1d(cfg.latent_dim, width, kernel_size=7, padding=3)
        self.context = nn.ModuleList(ConvNeXtBlock(width) for _ in range(cfg.context_blocks))
        self.blocks = nn.ModuleList(
            DecoderBlock(width // 2**i, width // 2 ** (i + 1), stride, cfg.residual_units, cfg.activation)
            for i, stride in enumerate(reversed(cfg.strides))
        )
        out = width // 2 ** len(cfg.strides)
        self.head = nn.Sequential(activation(cfg.activation, out), conv1d(out, 1, kernel_size=7, padding=3))

    def forward(self, z: Tensor) -> Tensor:
        x = self.stem(z)
        for block in self.context:
            x = block(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
