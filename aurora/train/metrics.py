"""Metrics out of the loop: JSONL always, wandb when enabled, a progress bar on rank 0.

Every write is non-fatal (``aurora.train.nonfatal``): a full disk under metrics.jsonl or a
wandb server that went away is counted (``errors/metrics``, ``errors/wandb``) and the run goes on.
"""

import json
from pathlib import Path

from tqdm import tqdm

from aurora.config.schema import LoggingConfig
from aurora.train import faults
from aurora.train.nonfatal import NonFatal

STEP_TIMES = "step_times.jsonl"
"""Every rank's step time at each logged step: ``{"step", "step_time_s": [rank 0, rank 1, ...]}``
lines (the straggler plot of ``tools.profile_report``)."""


def _wandb_media(path: Path):
    import wandb

    return wandb.Audio(str(path)) if path.suffix in (".flac", ".wav") else wandb.Image(str(path))


class MetricsLogger:
    """Rank 0 writes; other ranks hold a logger that does nothing, so call sites need no if."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config_dict: dict, is_main: bool,
                 start_step: int, max_steps: int, progress_bar: bool, nonfatal: NonFatal):
        self.active = is_main
        self.nonfatal = nonfatal
        self.file = None
        self.wandb_run = None
        self.bar = None
        if not is_main:
            return
        self.file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
        self.step_times = open(Path(run_dir) / STEP_TIMES, "a", buffering=1)
        if cfg.wandb:
            with nonfatal("wandb"):
                import wandb

                self.wandb_run = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode.value, dir=str(run_dir),
                                            config=config_dict, resume="allow", id=Path(run_dir).resolve().name)
        if progress_bar:
            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict, rank_step_times: list[float] | None = None) -> None:
        """Numbers, and paths of media files (evaluation's audio and images): JSONL records a
        path as its string, wandb shows the file itself. ``rank_step_times`` (every rank's step
        time, in rank order) go to RUN/step_times.jsonl, not to wandb."""
        if not self.active:
            return
        with self.nonfatal("metrics"):
            faults.maybe_raise("metrics", step)
            record = {k: str(v) if isinstance(v, Path) else v for k, v in metrics.items()}
            self.file.write(json.dumps({"step": step, **record}) + "\n")
            if rank_step_times is not None:
                self.step_times.write(json.dumps({"step": step, "step_time_s": rank_step_times}) + "\n")
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{metrics.get('lr', 0):.2e}")
        if self.wandb_run is not None:
            with self.nonfatal("wandb"):
                faults.maybe_raise("wandb", step)
                self.wandb_run.log({k: _wandb_media(v) if isinstance(v, Path) else v for k, v in metrics.items()},
                                   step=step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
            self.step_times.close()
        if self.wandb_run is not None:
            with self.nonfatal("wandb"):
                self.wandb_run.finish()
