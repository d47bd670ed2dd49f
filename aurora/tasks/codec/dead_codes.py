"""Dead-code re-initialisation for residual vector quantizers, at step boundaries.

A code that no rank picked during the last ``every`` optimizer steps is replaced by a lookup
input (the encoder-side ``z_e`` of its stage) drawn from rank 0's latest micro-batch and
broadcast, so every replica writes the same rows. Without it a small codec's codebooks
collapse to a handful of entries within tens of steps.

It runs between optimizer steps and every rank takes the same branch (the usage counts are
all-reduced first): codebook maintenance inside ``forward`` (EnCodec's k-means init and
expiry) issues collectives there, which deadlocks under DDP.
"""

import torch
import torch.distributed as dist

from aurora.distributed import all_reduce_sum
from aurora.engines import Engine
from aurora.perf.spans import span
from aurora.perf.step_clock import COMM
from aurora.models.codec.quantizer import code_counts


class DeadCodeReset:
    def __init__(self, n_q: int, codebook_size: int, codebook_dim: int, every: int, seed: int,
                 device: torch.device):
        self.every = every
        self.seed = seed
        self.codebook_size = codebook_size
        self.counts = torch.zeros(n_q, codebook_size, dtype=torch.long, device=device)
        """Uses of each code on this rank since the last reset check."""
        self.pool = torch.zeros(n_q, 0, codebook_dim, device=device)
        """This rank's latest lookup inputs per stage: [n_q, frames, codebook_dim]."""

    def observe(self, codes: torch.Tensor, lookup_inputs: torch.Tensor) -> None:
        """codes [B, n_q, T], lookup_inputs [B, n_q, codebook_dim, T] of one micro-batch."""
        n_q = codes.shape[1]
        self.counts += code_counts(codes, self.codebook_size)
        self.pool = lookup_inputs.detach().permute(1, 0, 3, 2).reshape(n_q, -1, lookup_inputs.shape[2])

    @torch.no_grad()
    def maybe_reset(self, step: int, codebooks: list[torch.nn.Parameter], engine: Engine) -> int:
        """On every ``every``-th step, replace the unused codes; return how many were replaced."""
        if self.every <= 0 or step % self.every:
            return 0
        with span("comm/dead_code_reset", COMM):
            return self._reset(step, codebooks, engine)

    def _reset(self, step: int, codebooks: list[torch.nn.Parameter], engine: Engine) -> int:
        dead = all_reduce_sum(self.counts) == 0  # [n_q, K], the same on every rank
        self.counts.zero_()
        replaced = int(dead.sum())
        if replaced == 0:
            return 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        frames = torch.randint(0, self.pool.shape[1], (self.pool.shape[0], self.codebook_size), generator=generator)
        fresh = torch.stack([stage[index.to(stage.device)] for stage, index in zip(self.pool, frames)])
        dist.broadcast(fresh, src=0)
        for stage, param in enumerate(codebooks):
            full = engine.read_full(param)
            full[dead[stage]] = fresh[stage][dead[stage]].to(full.dtype)
            engine.write_full(param, full)
        return replaced

    def state_dict(self) -> dict:
        return {"counts": self.counts.cpu(), "pool": self.pool.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = state["counts"].to(self.counts.device)
        self.pool = state["pool"].to(self.counts.device)
