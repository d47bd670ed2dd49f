"""A residual-vector-quantized (RVQ) audio codec of the EnCodec / DAC family, and its GAN discriminator.

    wav [B, 1, S] -> Encoder -> z [B, D, T] -> ResidualVectorQuantizer -> codes [B, n_q, T]
                                                                       -> z_q [B, D, T] -> Decoder -> wav

with T = S / hop_length and hop_length = prod(strides). Each quantizer stage uses DAC's factorized,
l2-normalized codes (Kumar et al. 2023): the nearest-neighbour lookup runs by cosine similarity in a
low-dimensional projection of the latent, where an N(0, 1) codebook covers all directions.

- `layers`: weight-normed convs, Snake, the ConvNeXt context block.
- `generator`: Encoder and Decoder (SEANet strides, dilated residual units, Snake or ELU, optional
  ConvNeXt context blocks at the bottleneck as in EVA-GAN).
- `quantizer`: VectorQuantizer, ResidualVectorQuantizer (with DAC's quantizer dropout), codebook_usage.
- `codec`: CodecConfig and the Codec (encoder + quantizer + decoder).
- `discriminators`: DAC's multi-period and multi-band STFT discriminators.

The models are plain nn.Modules built from dataclasses: they know nothing of distribution, data or
config files.
"""

from aurora.models.codec.codec import INT16_CODES, Codec, CodecConfig, CodecOutput
from aurora.models.codec.discriminators import (
    BandSTFTDiscriminator,
    Discriminator,
    DiscriminatorConfig,
    PeriodDiscriminator,
)
from aurora.models.codec.generator import Decoder, DecoderBlock, Encoder, EncoderBlock, ResidualUnit
from aurora.models.codec.layers import ConvNeXtBlock, Snake1d, activation
from aurora.models.codec.quantizer import (
    QuantizerOutput,
    ResidualVectorQuantizer,
    VectorQuantizer,
    codebook_usage,
    draw_stages,
)

__all__ = [
    "INT16_CODES",
    "BandSTFTDiscriminator",
    "Codec",
    "CodecConfig",
    "CodecOutput",
    "ConvNeXtBlock",
    "Decoder",
    "DecoderBlock",
    "Discriminator",
    "DiscriminatorConfig",
    "Encoder",
    "EncoderBlock",
    "PeriodDiscriminator",
    "QuantizerOutput",
    "ResidualUnit",
    "ResidualVectorQuantizer",
    "Snake1d",
    "VectorQuantizer",
    "activation",
    "codebook_usage",
    "draw_stages",
]
