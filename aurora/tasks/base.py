"""What a recipe provides to the training loop.

A recipe is one file in this package: it builds its model from config, says which blocks a
sharding engine wraps, and turns a batch into a loss. The loop never imports a model.
"""

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from aurora.config.schema import TrainConfig
from aurora.dist import DistEnv
from aurora.engines import Engine


MODEL_FLOPS = "model_flops"


class Task(ABC):
    config_class: ClassVar[type[TrainConfig]]
    """The recipe's config schema (TrainConfig plus its model/loss sections)."""
    data_kind: ClassVar[str]
    """Which shard kind the recipe reads: "audio" or "tokens"."""

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg = cfg
        self.env = env

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (on the CPU; the engine moves it)."""

    @abstractmethod
    def shard_units(self, model: nn.Module) -> list[nn.Module]:
        """Blocks of ``model`` that a sharding engine wraps one by one."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss to minimise and detached metrics, for one micro-batch. ``model`` is the wrapped
        module: call it (its forward), never its methods, so engine hooks run."""

    def after_step(self, model: nn.Module, engine: Engine, step: int) -> dict[str, float]:
        """Called on every rank after optimizer step ``step``, for maintenance that must happen
        between steps (it may issue collectives: every rank calls it). Returns metrics."""
        return {}

    def state_dict(self) -> dict:
        """This rank's recipe state that a checkpoint must carry (beyond the model)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def batch_items(self, batch: dict) -> dict[str, float]:
        """Work counted for throughput, e.g. {"samples": B, "frames": N}; an entry
        ``MODEL_FLOPS`` (forward + backward FLOPs of the batch, padding included) gives the
        loop its TFLOP/s and MFU."""
        return {"samples": float(len(batch["keys"]))}

    def evaluate(self, checkpoint: Path) -> dict[str, float]:
        """Held-out loss of the weights in ``checkpoint``, over the first ``trainer.eval_batches``
        batches of ``data.eval_shards``, weighted by valid units as in training. Runs on rank 0
        alone, on a plain copy of the model (no collectives), so a failure cannot leave ranks out
        of step; ``loss`` sees a model in eval mode."""
        from aurora.data import batch_to_device, build_loader
        from aurora.train.checkpoint import load_model_weights

        model = self.build_model()
        load_model_weights(model, checkpoint)
        model.to(self.env.device).eval()
        data_cfg = dataclasses.replace(self.cfg.data, shards=self.cfg.data.eval_shards, eval_shards=None)
        loader = build_loader(data_cfg, self.data_kind, rank=0, world_size=1, seed=self.cfg.run.seed)
        loss_sum = units = 0.0
        with torch.no_grad():
            for batch, _ in zip(loader, range(self.cfg.trainer.eval_batches)):
                batch = batch_to_device(batch, self.env.device)
                loss, _ = self.loss(model, batch)
                valid = float(batch["lengths"].sum())
                loss_sum += loss.item() * valid
                units += valid
        return {"eval/loss": loss_sum / units}

    def on_train_end(self, run_dir: Path) -> None:
        """Called on rank 0 after the final checkpoint (e.g. write samples)."""
