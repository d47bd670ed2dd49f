"""Adversarial losses for a codec's generator and its discriminators: LSGAN or hinge, plus feature matching.

Discriminator outputs follow the DAC / HiFi-GAN convention, :data:`DiscOutputs`: one list per
sub-discriminator (multi-period, multi-scale, STFT bands...), each a list of feature maps whose
LAST element is the logits. Every loss is a sum over sub-discriminators of per-map means, so a
sub-discriminator counts the same whatever the size of its maps.

Everything is computed in fp32 with autocast off, whatever the inputs' dtype: squared bf16/fp16
logits overflow and their means lose most of their bits, which turns into NaN losses.

The caller decides what is detached: :func:`discriminator_loss` expects discriminator outputs on
a detached fake (so the generator gets no gradient from the discriminator's step), while
:func:`generator_adversarial_loss` and :func:`feature_matching_loss` expect outputs on the live
fake. Feature matching detaches the real features itself.
"""

from collections.abc import Sequence
from enum import Enum

import torch
from torch import Tensor

DiscOutputs = Sequence[Sequence[Tensor]]
"""Per sub-discriminator, its feature maps; the last one of each is the logits."""


class GanLossKind(str, Enum):
    lsgan = "lsgan"
    hinge = "hinge"


def _kind(kind: str | GanLossKind) -> GanLossKind:
    try:
        return GanLossKind(kind)
    except ValueError:
        valid = ", ".join(repr(k.value) for k in GanLossKind)
        raise ValueError(f"unknown GAN loss kind {kind!r}: use one of {valid}") from None


def _check_outputs(outputs: DiscOutputs, name: str) -> None:
    if len(outputs) == 0:
        raise ValueError(f"{name} has no sub-discriminator outputs: expected a list of lists of tensors")
    for i, maps in enumerate(outputs):
        if len(maps) == 0:
            raise ValueError(f"{name}[{i}] is empty: each sub-discriminator must return at least its logits")


def _check_same_structure(real: DiscOutputs, fake: DiscOutputs) -> None:
    """Same number of sub-discriminators, of maps in each, and same shapes map by map."""
    _check_outputs(real, "real")
    _check_outputs(fake, "fake")
    if len(real) != len(fake):
        raise ValueError(f"real has {len(real)} sub-discriminator outputs but fake has {len(fake)}: "
                         "pass the outputs of the same discriminators for both")
    for i, (r_maps, f_maps) in enumerate(zip(real, fake)):
        if len(r_maps) != len(f_maps):
            raise ValueError(f"sub-discriminator {i}: real has {len(r_maps)} feature maps but fake has "
                             f"{len(f_maps)}")
        for j, (r, f) in enumerate(zip(r_maps, f_maps)):
            if r.shape != f.shape:
                raise ValueError(f"sub-discriminator {i}, map {j}: real shape {tuple(r.shape)} != fake shape "
                                 f"{tuple(f.shape)}; real and fake audio must have the same shape")


def _no_autocast(outputs: DiscOutputs) -> torch.autocast:
    return torch.autocast(outputs[0][-1].device.type, enabled=False)


def discriminator_loss(real: DiscOutputs, fake: DiscOutputs, kind: str | GanLossKind) -> Tensor:
    """Discriminator loss, summed over sub-discriminators.

    lsgan (DAC): mean((1 - real_logits)^2) + mean(fake_logits^2).
    hinge (EnCodec): mean(relu(1 - real_logits)) + mean(relu(1 + fake_logits)).
    """
    kind = _kind(kind)
    _check_same_structure(real, fake)
    with _no_autocast(real):
        loss = real[0][-1].new_zeros((), dtype=torch.float32)
        for r_maps, f_maps in zip(real, fake):
            r, f = r_maps[-1].float(), f_maps[-1].float()
            if kind is GanLossKind.lsgan:
                loss = loss + (1 - r).square().mean() + f.square().mean()
            else:
                loss = loss + torch.relu(1 - r).mean() + torch.relu(1 + f).mean()
    return loss


def generator_adversarial_loss(fake: DiscOutputs, kind: str | GanLossKind) -> Tensor:
    """Generator's adversarial loss on the fake's logits, summed over sub-discriminators.

    lsgan (DAC): mean((1 - fake_logits)^2).
    hinge: mean(relu(1 - fake_logits)), EnCodec's choice, rather than the usual -mean(fake_logits):
    the generator stops being pushed on items the discriminator already scores past the margin,
    and the loss stays bounded below like the discriminator's.
    """
    kind = _kind(kind)
    _check_outputs(fake, "fake")
    with _no_autocast(fake):
        loss = fake[0][-1].new_zeros((), dtype=torch.float32)
        for f_maps in fake:
            f = f_maps[-1].float()
            if kind is GanLossKind.lsgan:
                loss = loss + (1 - f).square().mean()
            else:
                loss = loss + torch.relu(1 - f).mean()
    return loss


def feature_matching_loss(real: DiscOutputs, fake: DiscOutputs) -> Tensor:
    """DAC's feature matching: mean |fake - real| per feature map (logits excluded), summed over maps
    and sub-discriminators. Real features are detached.

    EnCodec instead divides each map's L1 by mean |real| of that map; we keep DAC's plain sum, whose
    scale does not move with the discriminator's activations (and with the balancer, the scale of a
    loss does not matter anyway).
    """
    _check_same_structure(real, fake)
    with _no_autocast(fake):
        loss = fake[0][-1].new_zeros((), dtype=torch.float32)
        for r_maps, f_maps in zip(real, fake):
            for r, f in zip(r_maps[:-1], f_maps[:-1]):
                loss = loss + (f.float() - r.detach().float()).abs().mean()
    return loss
