"""Metrics out of the loop: JSONL always, wandb when enabled, a progress bar on rank 0."""

import json
from pathlib import Path

from tqdm import tqdm

from aurora.config.schema import LoggingConfig


class MetricsLogger:
    """Rank 0 writes; other ranks hold a logger that does nothing, so call sites need no if."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, config_dict: dict, is_main: bool,
                 start_step: int, max_steps: int, progress_bar: bool):
        self.active = is_main
        self.file = None
        self.wandb_run = None
        self.bar = None
        if not is_main:
            return
        self.file = open(Path(run_dir) / "metrics.jsonl", "a", buffering=1)
        if cfg.wandb:
            import wandb

            self.wandb_run = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode.value, dir=str(run_dir),
                                        config=config_dict, resume="allow", id=Path(run_dir).resolve().name)
        if progress_bar:
            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": step, **metrics}
        self.file.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{metrics.get('lr', 0):.2e}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
