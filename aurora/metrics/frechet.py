"""The Fréchet distance between two sets of embeddings, and the embedding it is taken on here.

No pretrained audio embedder (VGGish, PANNs, CLAP) can be downloaded on this project's machines,
so generated clips are compared with real ones in the space of the codec they were made with:
a clip's embedding is its codec-encoder latents before quantization, ``[latent_dim, T]``,
averaged over time (``pooled_latents``). For a latent diffusion model that space is its own
output space: a generated clip's embedding is the mean over frames of the latents it generated,
a real clip's that of the latents its audio encodes to (``data_prep.tokenize --latents``).

FD = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½) over the two sets' means and covariances
(Fréchet Inception Distance's formula, Heusel et al. 2017; the matrix square root is scipy's
``sqrtm``, its imaginary rounding dropped). With fewer clips than dimensions the covariances are
singular; the distance is then a small-sample figure, comparable only between sets of the same
size.
"""

import numpy as np
import torch
from scipy import linalg


def pooled_latents(latents: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[B, latent_dim] means over the valid frames of latents [B, latent_dim, T]."""
    if lengths is None:
        return latents.float().mean(-1)
    mask = (torch.arange(latents.shape[-1])[None] < lengths[:, None]).float()[:, None]
    return (latents.float() * mask).sum(-1) / mask.sum(-1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between embeddings a [N, D] and b [M, D] (each as a Gaussian)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))
