"""The model of one checkpoint of a training run, read in one CPU process whatever engine and
world size wrote it: DCP's reader loads each tensor into a model allocated once, in the export
dtype (built on the meta device, so nothing is initialised only to be overwritten); DeepSpeed's
files merge through its ``zero_to_fp32`` path (``aurora.runs.load_model_weights``)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aurora.config import load_config, peek_task
from aurora.exported import TRUST_FLAG, ModelKind, ModelLoadError, kind_config, require_trust, run_of
from aurora.runs import (SHARED_FILE, complete_checkpoints, is_complete, load_model_weights, resolve_checkpoint,
                         saved_world, step_dirname)


@dataclass
class RunModel:
    run: Path
    checkpoint: Path
    task: str
    """The recipe's name (``task:``)."""
    train_config: Any
    """The run's resolved config (its recipe's schema)."""
    kind: ModelKind
    config: Any
    """The model's config (``kind.config_class``)."""
    model: nn.Module
    """With the checkpoint's weights, on the CPU, in eval mode."""


def checkpoint_of(path: Path, step: int | None, what: str = "RUN") -> Path:
    """The complete checkpoint of run ``path`` at ``step`` (default: the latest), or ``path``
    itself if it is a checkpoint; ``ModelLoadError`` naming what is missing otherwise."""
    run = run_of(path)
    if step is not None:
        if run != path:
            raise ModelLoadError(f"{what} {path} is one checkpoint: --step chooses among a run's checkpoints; "
                                 f"give the run directory {run}")
        path = run / "checkpoints" / step_dirname(step)
        if not path.is_dir():
            steps = [int(p.name.split("_")[1]) for p in complete_checkpoints(run / "checkpoints")]
            raise ModelLoadError(f"{what} {run} has no checkpoint of step {step}; its complete checkpoints are of "
                                 f"steps {', '.join(map(str, steps)) or '(none)'}")
    try:
        checkpoint = resolve_checkpoint(path)
    except FileNotFoundError as e:
        raise ModelLoadError(f"{what} {str(e).splitlines()[0]}; train until the run saves one") from None
    if not is_complete(checkpoint):
        missing = [name for name, there in ((".metadata", (checkpoint / ".metadata").is_file()),
                                            (SHARED_FILE, (checkpoint / SHARED_FILE).is_file()),
                                            ("every rank's rank_R_of_N.pt", saved_world(checkpoint) is not None))
                   if not there]
        missing = ", ".join(missing) or "its final step_N name"
        raise ModelLoadError(f"{what} checkpoint {checkpoint} is incomplete (missing {missing}): a save was "
                             f"interrupted; give another step")
    return checkpoint


def read_run_model(path: str | Path, step: int | None = None, dtype: torch.dtype = torch.float32, *, trust: bool,
                   what: str = "RUN", how_to_trust: str = TRUST_FLAG) -> RunModel:
    """The main model of run (or checkpoint) ``path`` at ``step``, in ``dtype`` (read only if
    ``trust``: ``aurora.exported``)."""
    from aurora.tasks import get_task

    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{what} {path} {'is a file' if path.exists() else 'does not exist'}: give a training "
                             f"run directory or one of its checkpoints")
    require_trust(path, trust, what, how_to_trust)
    checkpoint = checkpoint_of(path, step, what)
    run = run_of(checkpoint)
    task = peek_task(run / "config.yaml")
    task_cls = get_task(task)
    if task_cls.model_kind is None:
        raise ModelLoadError(f"{what} {run} is a '{task}' run, whose recipe declares no exported model kind "
                             f"(Task.model_kind): it cannot be exported yet")
    kind = task_cls.model_kind
    config = kind_config(kind, kind.run_config(run))
    with torch.device("meta"):
        model = kind.build(config)
    model = model.to(dtype).to_empty(device="cpu")  # DCP's reader copies (and casts) each tensor into these
    load_model_weights(model, checkpoint)
    return RunModel(run, checkpoint, task, load_config(task_cls.config_class, run / "config.yaml"), kind, config,
                    model.eval())
