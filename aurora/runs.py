"""Reading what a training run wrote, in any process, without its training stack: where its
checkpoints are, which one is complete and newest, and the weights of a model in one.

Layout of a run directory::

    RUN/config.yaml               the resolved config
    RUN/checkpoints/step_N/       a complete checkpoint (DCP files, rank_*.pt, shared.pt)
    RUN/checkpoints/step_N.tmp/   a save in progress, or one a crash interrupted: never read
    RUN/checkpoints/latest        the name of the newest complete checkpoint

The write side (atomic saves, async writes, full disks) is ``aurora.train.checkpoint``.
"""

import re
import sys
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import nn

LATEST = "latest"
SHARED_FILE = "shared.pt"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(path: Path, rank: int) -> Path:
    return path / f"rank_{rank:05d}.pt"


def is_complete(path: Path) -> bool:
    """A finished save: a final name, DCP's metadata, the shared state and the rank files."""
    return (_STEP_DIR.fullmatch(path.name) is not None and (path / ".metadata").is_file()
            and (path / SHARED_FILE).is_file() and any(path.glob("rank_*.pt")))


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    found = [p for p in checkpoints_dir.glob("step_*") if is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint directory, given either one or a run directory: the one ``latest``
    names, or, when that pointer is missing or names an incomplete directory, the newest
    complete one."""
    path = Path(path)
    if (path / ".metadata").is_file():
        return path
    checkpoints = path / "checkpoints"
    pointer = checkpoints / LATEST
    if pointer.is_file():
        named = checkpoints / pointer.read_text().strip()
        if is_complete(named):
            return named
    found = complete_checkpoints(checkpoints)
    if found:
        if pointer.is_file():
            print(f"aurora: {pointer} names {pointer.read_text().strip()}, which is not a complete "
                  f"checkpoint; using {found[-1].name}, the newest complete one", file=sys.stderr)
        return found[-1]
    raise FileNotFoundError(
        f"no checkpoint at {path}: expected a run directory with complete checkpoints under "
        "checkpoints/ or a checkpoint directory holding DCP's .metadata"
    )


def load_model_weights(model: nn.Module, path: str | Path, part: str | None = None) -> Path:
    """Load the main model of a training checkpoint, or the extra part ``part`` (a GAN's
    discriminator), into a plain (unwrapped) module, in this process alone (no collectives):
    for evaluation, tokenizing, sampling, fine-tuning and export."""
    ckpt = resolve_checkpoint(path)
    if part is None:
        from aurora.engines.deepspeed import consolidated_weights  # deepspeed itself is imported only if needed

        native = consolidated_weights(ckpt)
        if native is not None:
            model.load_state_dict(native)
            return ckpt
        state = {"model": model.state_dict()}
    else:
        state = {"parts": {part: {"model": model.state_dict()}}}
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: we ask it to
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=ckpt, no_dist=True)
    model.load_state_dict(state["model"] if part is None else state["parts"][part]["model"])
    return ckpt
