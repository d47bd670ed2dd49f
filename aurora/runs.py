"""Reading what a training run wrote, in any process, without its training stack: where its
checkpoints are, which one is complete and newest, and the weights of a model in one.

Layout of a run directory::

    RUN/config.yaml               the resolved config
    RUN/checkpoints/step_N/       a complete checkpoint (DCP files, rank_R_of_N.pt, shared.pt)
      deepspeed/                  the main model's files in its engine's own format (DeepSpeed's)
      parts/<name>/               the same for part <name> (a GAN's discriminator, an EMA target)
    RUN/checkpoints/step_N.tmp/   a save in progress, or one a crash interrupted: never read
    RUN/checkpoints/latest        the name of the newest complete checkpoint

The write side (atomic saves, async writes, full disks) is ``aurora.train.checkpoint``.
"""

import hashlib
import re
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

LATEST = "latest"
SHARED_FILE = "shared.pt"
ENGINE_FILES_DIR = "deepspeed"
"""Sub-folder of a checkpoint holding the main model's engine files (DeepSpeed's, the only engine
with files of its own)."""
PARTS_DIR = "parts"
"""Sub-folder of a checkpoint for the parts beside the main model (and their key in DCP's state)."""
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


_RANK_FILE = re.compile(r"rank_(\d{5})_of_(\d{5})\.pt")
"""A rank's file names its rank and how many ranks saved: a checkpoint says itself whether every
rank's file is there, without reading any."""


def rank_file(path: Path, rank: int, world: int) -> Path:
    return path / f"rank_{rank:05d}_of_{world:05d}.pt"


def saved_world(path: Path) -> int | None:
    """How many ranks wrote checkpoint ``path``, when the file of every one of them is there
    (and all name the same number); else None."""
    named = [m.groups() for p in path.glob("rank_*.pt") if (m := _RANK_FILE.fullmatch(p.name))]
    worlds = {int(world) for _, world in named}
    if len(worlds) != 1:
        return None
    world = worlds.pop()
    return world if sorted(int(rank) for rank, _ in named) == list(range(world)) else None


def engine_files_dir(checkpoint: Path, part: str | None = None) -> Path:
    """Where an engine keeps its own files in ``checkpoint``: for the main model, or for part ``part``."""
    return checkpoint / ENGINE_FILES_DIR if part is None else checkpoint / PARTS_DIR / part


def weights_id(model: nn.Module) -> str:
    """``sha256:<hex>`` of ``model``'s state dict (names, dtypes, shapes and bytes, in name order):
    the identity of a set of weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def is_complete(path: Path) -> bool:
    """A finished save: a final name, DCP's metadata, the shared state and every rank's file."""
    return (_STEP_DIR.fullmatch(path.name) is not None and (path / ".metadata").is_file()
            and (path / SHARED_FILE).is_file() and saved_world(path) is not None)


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    found = [p for p in checkpoints_dir.glob("step_*") if is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def _pointed(checkpoints: Path, pointer: Path) -> Path:
    """The directory ``pointer`` names, which must be a ``step_N`` directly inside
    ``checkpoints`` (a symlink out of it too is refused): a run is read only inside its own
    directory."""
    name = pointer.read_text().strip()
    named = checkpoints / name
    if _STEP_DIR.fullmatch(name) is None or named.resolve().parent != checkpoints.resolve():
        raise ValueError(f"{pointer} names {name[:200]!r}, which is not a checkpoint directory inside {checkpoints} "
                         f"(aurora writes a step_N name there): write the name of one of its checkpoints into it, "
                         f"or delete it to resume from the newest complete one")
    return named


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
        named = _pointed(checkpoints, pointer)
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
    """Load the main model of a training checkpoint, or the part ``part`` (a GAN's discriminator,
    an EMA target), into a plain (unwrapped) module, in this process alone (no collectives): for
    evaluation, tokenizing, sampling, fine-tuning and export."""
    ckpt = resolve_checkpoint(path)
    from aurora.engines.deepspeed import consolidated_weights  # deepspeed itself is imported only if needed

    native = consolidated_weights(engine_files_dir(ckpt, part))
    if native is not None:
        model.load_state_dict(native)
        return ckpt
    if part is None:
        state = {"model": model.state_dict()}
    else:
        saved = {key.split(".")[1] for key in dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata
                 if key.startswith(f"{PARTS_DIR}.")}
        if part not in saved:
            raise LookupError(f"{ckpt} holds no part '{part}' (it holds: {', '.join(sorted(saved)) or 'none'}); a "
                              f"frozen part that never changes is not saved: load it from its own source")
        state = {PARTS_DIR: {part: {"model": model.state_dict()}}}
    with warnings.catch_warnings():  # DCP warns that it runs without a process group: we ask it to
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=ckpt, no_dist=True)
    model.load_state_dict(state["model"] if part is None else state[PARTS_DIR][part]["model"])
    return ckpt
