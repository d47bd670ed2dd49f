"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, resharding on load.

Layout of ``RUN/checkpoints``::

    step_00000004/        DCP files (model, optimizer, scheduler, step) + rank_00000.pt ...
    latest                name of the newest complete checkpoint directory

A save is written into ``step_N.tmp`` and renamed once every rank has finished; ``latest``
moves only after that rename, so a crash mid-save never leaves it pointing at a partial one.
The per-rank files hold what differs between ranks: RNG states and the data stream position.
"""

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from aurora.dist import DistEnv, barrier

LATEST = "latest"


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def _rank_file(path: Path, rank: int) -> Path:
    return path / f"rank_{rank:05d}.pt"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, given either one or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / ".metadata").is_file():
        return path
    pointer = path / "checkpoints" / LATEST
    if pointer.is_file():
        ckpt = pointer.parent / pointer.read_text().strip()
        if (ckpt / ".metadata").is_file():
            return ckpt
        raise FileNotFoundError(f"{pointer} names {ckpt.name}, which is not a complete checkpoint")
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory with checkpoints/{LATEST} "
        "or a checkpoint directory holding DCP's .metadata"
    )


class Checkpointer:
    def __init__(self, run_dir: Path, env: DistEnv):
        self.dir = Path(run_dir) / "checkpoints"
        self.env = env

    def latest(self) -> Path | None:
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        return resolve_checkpoint(self.dir.parent)

    def save(self, step: int, app_state: dict, rank_state: dict) -> Path:
        final = self.dir / step_dirname(step)
        tmp = final.with_name(final.name + ".tmp")
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        dcp.save(app_state, checkpoint_id=tmp)
        torch.save(rank_state, _rank_file(tmp, self.env.rank))
        barrier()
        if self.env.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.dir / (LATEST + ".tmp")
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.dir / LATEST)
        barrier()
        return final

    def load(self, path: Path, app_state: dict) -> dict:
        """Fill ``app_state`` in place from ``path``; return this rank's own state."""
        rank_file = _rank_file(path, self.env.rank)
        if not rank_file.is_file():
            saved = len(list(path.glob("rank_*.pt")))
            raise RuntimeError(
                f"{path} was saved by {saved} ranks and this job has {self.env.world_size}: "
                "resume with the same number of processes"
            )
        dcp.load(app_state, checkpoint_id=path)
        return torch.load(rank_file, weights_only=False)


def load_model_weights(model: nn.Module, path: str | Path) -> Path:
    """Load the model part of a training checkpoint into a plain (unwrapped) module, in this
    process alone (no collectives): for tokenizing, sampling and export."""
    ckpt = resolve_checkpoint(path)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: we ask it to
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=ckpt, no_dist=True)
    model.load_state_dict(state["model"])
    return ckpt
