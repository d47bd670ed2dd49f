"""The Fréchet distance against its closed form for Gaussians with known moments."""

import math

import pytest
import torch

from aurora.metrics.frechet import frechet_distance, pooled_latents


def test_frechet_distance_of_diagonal_gaussians_is_its_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    b = torch.randn(4000, 3, generator=g) * torch.tensor([3.0, 2.0, 0.5]) + torch.tensor([1.0, 0.0, 0.0])
    # diagonal covariances: |mu_a - mu_b|^2 + sum (s_a - s_b)^2 = 1 + (1 - 3)^2
    assert frechet_distance(a, b) == pytest.approx(1 + 4, rel=0.08)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_pooled_latents_average_the_valid_frames():
    latents = torch.tensor([[[1.0, 3.0, 100.0]], [[2.0, 2.0, 2.0]]])
    assert pooled_latents(latents, torch.tensor([2, 3])).tolist() == [[2.0], [2.0]]
    assert math.isclose(pooled_latents(latents)[0, 0].item(), 104 / 3, rel_tol=1e-6)
