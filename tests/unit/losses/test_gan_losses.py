"""GAN losses against values worked out by hand on tiny discriminator outputs."""

import pytest
import torch

from aurora.losses.gan import (
    GanLossKind,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)


def _outputs():
    """Two sub-discriminators: the first with two feature maps then logits, the second logits only."""
    real = [
        [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]), torch.tensor([[0.5, 1.5]])],
        [torch.tensor([[2.0]])],
    ]
    fake = [
        [torch.tensor([[0.0, 4.0]]), torch.tensor([[1.0]]), torch.tensor([[-0.5, 2.0]])],
        [torch.tensor([[0.0]])],
    ]
    return real, fake


def test_discriminator_loss_by_hand():
    real, fake = _outputs()
    # lsgan: sub 0: mean(0.5^2, (-0.5)^2) + mean(0.5^2, 2^2) = 0.25 + 2.125; sub 1: (1-2)^2 + 0^2 = 1
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(3.375)
    # hinge: sub 0: mean(0.5, 0) + mean(0.5, 3) = 0.25 + 1.75; sub 1: relu(-1) + relu(1) = 1
    assert discriminator_loss(real, fake, GanLossKind.hinge).item() == pytest.approx(3.0)


def test_generator_adversarial_loss_by_hand():
    _, fake = _outputs()
    # lsgan: sub 0: mean(1.5^2, (-1)^2) = 1.625; sub 1: 1^2 = 1
    assert generator_adversarial_loss(fake, "lsgan").item() == pytest.approx(2.625)
    # hinge (EnCodec): sub 0: mean(relu(1.5), relu(-1)) = 0.75; sub 1: relu(1) = 1
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.75)


def test_feature_matching_by_hand_and_real_is_detached():
    real, fake = _outputs()
    real = [[t.clone().requires_grad_() for t in maps] for maps in real]
    fake = [[t.clone().requires_grad_() for t in maps] for maps in fake]
    loss = feature_matching_loss(real, fake)
    # sub 0: mean(|0-1|, |4-2|) + |1-3| = 1.5 + 2; logits and sub 1 (logits only) don't count
    assert loss.item() == pytest.approx(3.5)
    loss.backward()
    assert all(t.grad is None for maps in real for t in maps)
    assert torch.equal(fake[0][0].grad, torch.tensor([[-0.5, 0.5]]))  # sign(f - r) / numel
    assert fake[0][2].grad is None and fake[1][0].grad is None


def test_half_precision_inputs_give_exact_fp32_results():
    torch.manual_seed(0)
    real = [[torch.randn(4, 8).mul(50).to(torch.bfloat16), torch.randn(4, 300).mul(1000).to(torch.bfloat16)]]
    fake = [[torch.randn(4, 8).mul(50).to(torch.bfloat16), torch.randn(4, 300).mul(1000).to(torch.bfloat16)]]
    r64, f64 = real[0][1].double(), fake[0][1].double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = discriminator_loss(real, fake, "lsgan")
        g = generator_adversarial_loss(fake, "lsgan")
        fm = feature_matching_loss(real, fake)
    assert d.dtype == g.dtype == fm.dtype == torch.float32
    # In bf16 these means of ~1e6 values would be off by ~1%; in fp32 they match fp64.
    assert d.item() == pytest.approx(((1 - r64) ** 2).mean().item() + (f64**2).mean().item(), rel=1e-5)
    assert g.item() == pytest.approx(((1 - f64) ** 2).mean().item(), rel=1e-5)
    expected_fm = (fake[0][0].double() - real[0][0].double()).abs().mean().item()
    assert fm.item() == pytest.approx(expected_fm, rel=1e-5)

    # fp16 overflows past 65504: 1000^2 must still come out finite.
    big = [[torch.full((2, 3), 1000.0, dtype=torch.float16)]]
    assert discriminator_loss(big, big, "lsgan").item() == pytest.approx(999**2 + 1000**2)
    assert torch.isfinite(generator_adversarial_loss(big, "hinge"))


def test_structure_mismatch_is_an_error():
    real, fake = _outputs()
    with pytest.raises(ValueError, match="2 sub-discriminator outputs but fake has 1"):
        discriminator_loss(real, fake[:1], "lsgan")
    with pytest.raises(ValueError, match="sub-discriminator 0: real has 3 feature maps but fake has 2"):
        feature_matching_loss(real, [fake[0][1:], fake[1]])
    fake[1][0] = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"sub-discriminator 1, map 0: real shape \(1, 1\) != fake shape \(1, 2\)"):
        discriminator_loss(real, fake, "hinge")
    with pytest.raises(ValueError, match="fake\\[0\\] is empty"):
        generator_adversarial_loss([[]], "lsgan")


def test_bad_kind_lists_the_valid_ones():
    real, fake = _outputs()
    with pytest.raises(ValueError, match="unknown GAN loss kind 'wgan': use one of 'lsgan', 'hinge'"):
        discriminator_loss(real, fake, "wgan")
    with pytest.raises(ValueError, match="'lsgan', 'hinge'"):
        generator_adversarial_loss(fake, "LSGAN")
