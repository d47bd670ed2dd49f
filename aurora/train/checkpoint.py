"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, resharding on load.

Layout of ``RUN/checkpoints``::

    step_00000004/        DCP files (model, optimizer, scheduler, step), rank_00000.pt ...,
                          shared.pt
    latest                name of the newest complete checkpoint directory

A save is written into ``step_N.tmp`` and renamed once every rank has finished; ``latest``
moves only after that rename, so a crash mid-save never leaves it pointing at a partial one.
The per-rank files hold what differs between ranks and only fits that rank (RNG states, recipe
state); ``shared.pt`` holds what every rank of a resumed job may need from all the saving
ranks (each one's data stream position, for an elastic resume on another world size).
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


SHARED_FILE = "shared.pt"


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

    def save(self, step: int, app_state: dict, rank_state: dict, shared_state: dict) -> Path:
        """``shared_state`` is written by the main rank alone."""
        final = self.dir / step_dirname(step)
        tmp = final.with_name(final.name + ".tmp")
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        dcp.save(app_state, checkpoint_id=tmp)
        torch.save(rank_state, _rank_file(tmp, self.env.rank))
        if self.env.is_main:
            torch.save(shared_state, tmp / SHARED_FILE)
        barrier()
        if self.env.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.dir / (LATEST + ".tmp")
            pointer_tmp.write_text(final.name + "\n")
            os.replace(pointer_tmp, self.dir / LATEST)
        barrier()
        return final

    def load(self, path: Path, app_state: dict) -> tuple[dict, dict]:
        """Fill ``app_state`` in place from ``path`` (DCP reshards it to this world size);
        return (the rank state saved by this rank, or by ``rank % saved world size`` when the
        world size changed; the shared state)."""
        saved = len(list(path.glob("rank_*.pt")))
        if saved == 0 or not (path / SHARED_FILE).is_file():
            raise FileNotFoundError(f"{path} lacks its rank_*.pt or {SHARED_FILE} files: it was not written "
                                    f"by this aurora's trainer, or is damaged; resume from an earlier checkpoint")
        dcp.load(app_state, checkpoint_id=path)
        rank_state = torch.load(_rank_file(path, self.env.rank % saved), weights_only=False)
        return rank_state, torch.load(path / SHARED_FILE, weights_only=False)


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
