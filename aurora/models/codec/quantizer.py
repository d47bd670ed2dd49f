"""Residual vector quantization with DAC's factorized, l2-normalized codes and quantizer dropout."""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aurora.models.codec.layers import conv1d, fp32_region


class QuantizerOutput(NamedTuple):
    # A NamedTuple (not a dataclass) because it is a pytree: FSDP2 finds the tensors in a
    # module's output to hook the backward pass, and cannot see inside a plain dataclass.
    quantized: Tensor
    """[B, D, T] quantized latent; in the forward pass it carries the straight-through gradient.
    For a residual stack, the sum of the stages each item used (see n_q_used)."""
    codes: Tensor
    """[B, T] (one codebook) or [B, n_q, T] (residual stack, every stage), long."""
    commitment_loss: Tensor
    """mse(z_e, z_q.detach()) in the lookup space, pulls the encoder towards its codes. A scalar
    (the batch mean), or [B] from `VectorQuantizer.forward(x, per_item=True)`. Summed over the
    stages of a residual stack, each stage counting only the items that used it."""
    codebook_loss: Tensor
    """mse(z_q, z_e.detach()) in the lookup space, pulls the codes towards the encoder. Shaped and
    summed as commitment_loss."""
    lookup_inputs: Tensor
    """Detached z_e, what the lookup compared with the codebook: [B, codebook_dim, T] (one
    codebook) or [B, n_q, codebook_dim, T]. Fresh codes for dead entries are drawn from it."""
    n_q_used: Tensor
    """[B] long: how many stages (the first ones) make up each item's `quantized`; 1 for a single
    codebook. Fewer than n_q only under quantizer dropout or an explicit n_q."""


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
        self.in_proj = conv1d(dim, codebook_dim, kernel_size=1)
        self.out_proj = conv1d(codebook_dim, dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)  # N(0, 1) init

    def _lookup(self, z_e: Tensor) -> Tensor:
        """z_e [B, codebook_dim, T] -> codes [B, T] of the codebook rows nearest in direction."""
        b, d, t = z_e.shape
        # Under autocast the matmul would run in bf16, whose rounding flips near-tied assignments.
        with fp32_region(z_e.device):
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

    def forward(self, x: Tensor, per_item: bool = False) -> QuantizerOutput:
        """Quantize x [B, D, T]; per_item=True returns the losses per batch item ([B]) instead of
        their mean, for a residual stack to mask under quantizer dropout."""
        z_e = self.in_proj(x)
        codes = self._lookup(z_e)
        z_q = self.codebook(codes).transpose(1, 2)
        commitment_loss = F.mse_loss(z_e, z_q.detach(), reduction="none").mean((1, 2))
        codebook_loss = F.mse_loss(z_q, z_e.detach(), reduction="none").mean((1, 2))
        if not per_item:
            commitment_loss, codebook_loss = commitment_loss.mean(), codebook_loss.mean()
        z_q = z_e + (z_q - z_e).detach()  # the code's value, the gradient of z_e (straight-through)
        n_q_used = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        return QuantizerOutput(self.out_proj(z_q), codes, commitment_loss, codebook_loss, z_e.detach(), n_q_used)


class ResidualVectorQuantizer(nn.Module):
    """n_q vector quantizers, each quantizing what the previous ones left over.

    The losses are summed over stages (as in DAC), so a task's loss weights apply per stage.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, codebook_dim: int = 8):
        super().__init__()
        self.quantizers = nn.ModuleList(VectorQuantizer(dim, codebook_size, codebook_dim) for _ in range(n_q))

    def _check_n_q(self, n_q: int | None) -> int:
        n_q = len(self.quantizers) if n_q is None else n_q
        if not 1 <= n_q <= len(self.quantizers):
            raise ValueError(f"n_q must be in [1, {len(self.quantizers)}], got {n_q}")
        return n_q

    def forward(self, z: Tensor, n_q: int | None = None, dropout: float = 0.0,
                generator: torch.Generator | None = None, n_q_used: Tensor | None = None) -> QuantizerOutput:
        """Quantize z [B, D, T] with the first n_q stages (all by default).

        Quantizer dropout (DAC): in training mode with dropout > 0, each batch item independently,
        with probability `dropout`, uses only its first k stages, k ~ Uniform{1..n_q}, so that the
        decoder learns to work from any number of codebooks (see `draw_stages`, which takes
        `generator`). Alternatively `n_q_used` [B] gives each item's stage count directly, in any
        mode (dropout and generator are then ignored): draw it outside this module when it runs
        under activation checkpointing, as `Codec.forward` does, since the backward pass reruns
        this forward and a generator is not rewound. Every stage still runs on the whole
        residual, so `codes` and `lookup_inputs` hold all stages; a stage an item does not use adds
        nothing to its `quantized` or to the losses.
        """
        n_q = self._check_n_q(n_q)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"quantizer dropout must be in [0, 1], got {dropout}")
        batch = z.shape[0]
        if n_q_used is None:
            n_q_used = draw_stages(batch, n_q, dropout if self.training else 0.0, generator, z.device)
        elif n_q_used.shape != (batch,):
            raise ValueError(f"n_q_used must hold one stage count per batch item ({batch}), "
                             f"got shape {tuple(n_q_used.shape)}")
        n_q_used = n_q_used.to(z.device)

        quantized = torch.zeros_like(z)
        residual = z
        codes, lookup_inputs, commitment_loss, codebook_loss = [], [], 0.0, 0.0
        for i, vq in enumerate(self.quantizers):
            out = vq(residual, per_item=True)
            used = i < n_q_used  # [B] bool
            # out.quantized has the value of the decoded code and reaches `residual` through the
            # stage's projections with a straight-through gradient across the lookup.
            residual = residual - out.quantized
            quantized = quantized + out.quantized * used[:, None, None]
            codes.append(out.codes)
            lookup_inputs.append(out.lookup_inputs)
            # As DAC: the mean over the batch of the per-item loss, zero for items that skip the stage.
            commitment_loss = commitment_loss + (out.commitment_loss * used).mean()
            codebook_loss = codebook_loss + (out.codebook_loss * used).mean()
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), commitment_loss, codebook_loss,
                               torch.stack(lookup_inputs, dim=1), n_q_used)

    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """z [B, D, T] -> codes [B, n_q, T] from the first n_q stages (all by default)."""
        n_q = self._check_n_q(n_q)
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


def draw_stages(batch: int, n_q: int, dropout: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """Quantizer dropout's draw: [B] long stage counts on `device`, n_q for each item except that
    with probability `dropout` an item gets k ~ Uniform{1..n_q} instead (DAC draws for a fixed
    fraction of the batch; independent draws also drop some items of a batch of one).

    The draw uses `generator` (on its own device: seed one alike on every rank to draw alike) or
    else the global RNG of `device`. With dropout 0 it draws nothing and leaves the RNG alone.
    """
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"quantizer dropout must be in [0, 1], got {dropout}")
    n_q_used = torch.full((batch,), n_q, dtype=torch.long, device=device)
    if dropout == 0:
        return n_q_used
    at = n_q_used.device if generator is None else generator.device
    dropped = torch.rand(batch, generator=generator, device=at) < dropout
    k = torch.randint(1, n_q + 1, (batch,), generator=generator, device=at)
    return torch.where(dropped, k, n_q).to(n_q_used.device)


def code_counts(codes: Tensor, codebook_size: int) -> Tensor:
    """How often each entry of each codebook occurs in codes [B, k, T]: long [k, codebook_size].

    A scatter-add into a tensor of known size: ``torch.bincount`` reads its input's maximum back
    to the host to size its output, a GPU sync on every micro-batch."""
    k = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(k, -1) + torch.arange(k, device=codes.device)[:, None] * codebook_size
    counts = torch.zeros(k * codebook_size, dtype=torch.long, device=codes.device)
    return counts.index_add_(0, flat.flatten(), torch.ones_like(flat.flatten())).view(k, codebook_size)


def codebook_usage(codes: Tensor, codebook_size: int) -> Tensor:
    """Perplexity of each stage's code distribution in codes [B, n_q, T] -> [n_q].

    codebook_size when every entry is used equally often, 1 when a stage collapsed to one entry.
    """
    p = code_counts(codes, codebook_size).float()
    p = p / p.sum(1, keepdim=True)
    return torch.exp(-torch.special.xlogy(p, p).sum(1))
