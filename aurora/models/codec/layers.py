"""Building blocks shared by the codec's generator, quantizer and discriminators."""

import contextlib

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

ACTIVATIONS = ("snake", "elu")
"""Names `activation` accepts."""


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on `device`, for the few ops whose bf16 rounding matters (cast their
    inputs with .float()). A no-op on the meta device, which has no autocast."""
    # A test of the device type, not torch.amp.is_autocast_available: torch.compile cannot trace
    # that call, and would break the graph at every fp32 region.
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def conv1d(*args, **kwargs) -> nn.Module:
    """A weight-normed Conv1d with a zero bias."""
    # Zero bias, as DAC's `init_weights` leaves every Conv1d (its weight re-init is a no-op under
    # weight norm). With torch's default biases the constant offsets dominate the small latent of a
    # fresh encoder: every frame points the same way and the lookup picks one code for nearly all.
    conv = nn.Conv1d(*args, **kwargs)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return weight_norm(conv)


def conv_transpose1d(*args, **kwargs) -> nn.Module:
    """A weight-normed ConvTranspose1d (torch's default bias init, as DAC)."""
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


class Snake1d(nn.Module):
    """Snake (Ziyin et al. 2020), as DAC: x + sin(alpha * x)^2 / alpha with a learnable alpha per
    channel, a periodic inductive bias for audio. Input [B, C, T]."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        # The 1e-9 keeps alpha -> 0 finite (the limit is x + alpha * x^2 -> x).
        return x + (self.alpha + 1e-9).reciprocal() * (self.alpha * x).sin().pow(2)


def activation(name: str, channels: int) -> nn.Module:
    """The generator's nonlinearity: "snake" (per channel, DAC) or "elu" (EnCodec)."""
    if name == "snake":
        return Snake1d(channels)
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")


class ConvNeXtBlock(nn.Module):
    """A 1-D ConvNeXt block (Liu et al. 2022; Vocos), EVA-GAN's context-aware module:

        x -> depthwise conv (k=7) -> LayerNorm over channels -> Linear(dim, 4 dim) -> GELU
          -> Linear(4 dim, dim) -> * gamma -> + x

    The depthwise conv mixes 7 neighbouring frames, the pointwise MLP mixes channels. gamma (layer
    scale, 1e-6 at init) makes a fresh block nearly the identity. Input [B, dim, T].
    """

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)  # channels last for the norm and the linears
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)
