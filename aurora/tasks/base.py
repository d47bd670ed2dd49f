"""What a recipe provides to the training loop.

A recipe is one file in this package: it builds its model from config, says which blocks a
sharding engine wraps, and turns a batch into a loss. The loop never imports a model.
"""

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Optional

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from aurora.config.schema import OptimConfig, TrainConfig
from aurora.distributed import DistEnv
from aurora.engines import Engine
from aurora.exported import ModelKind
from aurora.runs import load_model_weights


MODEL_FLOPS = "model_flops"

MAIN_PART = "model"
"""The name of the recipe's main model (``build_model``) among the parts a step trains."""


@dataclasses.dataclass
class PartSpec:
    """A model a recipe trains beside its main one, with an optimizer of its own (a GAN's
    discriminator). The loop wraps it with its own engine instance, steps, clips, schedules,
    checkpoints (under ``parts/<name>``) and syncs it like the main model."""

    name: str
    """Its key in checkpoints and the prefix of its loss, grad_norm and lr metrics."""
    model: nn.Module
    """Freshly initialised, on the CPU."""
    shard_units: list[nn.Module]
    """Blocks a sharding engine wraps one by one."""
    optim: OptimConfig
    """Its optimizer and LR schedule."""
    clip_grad_norm: Optional[float]
    """Its global gradient-norm clip (null: none)."""


@dataclasses.dataclass
class FrozenPartSpec:
    """A model a recipe uses but does not train (an LCM teacher, a DPO reference, an EMA
    target): no optimizer, no gradients, in eval mode, sharded like the main model. The recipe
    calls it through ``PartModels`` under ``torch.no_grad()``."""

    name: str
    """Its key in ``PartModels`` and, if ``updated``, in checkpoints (``parts/<name>``)."""
    model: nn.Module
    """On the CPU, with its starting weights (a copy of the main model for an EMA target), or
    any weights if ``source`` is given."""
    shard_units: list[nn.Module]
    """Blocks a sharding engine wraps one by one."""
    updated: bool
    """True: the recipe changes it after optimizer steps (an EMA target, ``PartModels.ema_update``),
    so every checkpoint saves it and a resume restores it. False: it never changes (a teacher, a
    reference); checkpoints hold not its weights but their id (``aurora.runs.weights_id``), and a
    resume refuses a source whose weights have another id."""
    source: Optional[str | Path] = None
    """An exported folder or, with ``run.trust_checkpoint=true``, a training run or checkpoint
    (``aurora.exported``) its weights are loaded from at start (every start, resumes included; a
    run means its latest checkpoint, a checkpoint directory pins one); None keeps the model's own."""
    source_part: Optional[str] = None
    """The part of ``source`` to load (None: its main model)."""


class PartModels(dict):
    """Each part's wrapped model by name, trained and frozen, with the engine that runs it."""

    def __init__(self, wrapped: dict[str, nn.Module], engines: dict[str, Engine]):
        super().__init__(wrapped)
        self.engines = engines

    def inner(self, name: str) -> nn.Module:
        """Part ``name``'s own module inside its engine's wrapper (to reach its submodules)."""
        return self.engines[name].unwrap(self[name])

    def local_shards(self, name: str) -> list[torch.Tensor]:
        """The elements of part ``name``'s parameters this rank holds (``Engine.local_shards``)."""
        return self.engines[name].local_shards(self[name])

    def ema_update(self, target: str, source: str, decay: float) -> None:
        """target = decay * target + (1 - decay) * source, parameter by parameter, on each rank's
        local elements (no collective): parts of the same shapes hold the same elements of each
        parameter whatever the engine shards."""
        targets, sources = self.local_shards(target), self.local_shards(source)
        if [t.shape for t in targets] != [s.shape for s in sources]:
            raise ValueError(f"part '{target}' cannot follow part '{source}': their parameters differ in number or "
                             f"shape; build the EMA target as a copy of the model it follows")
        get_ema_multi_avg_fn(decay)(targets, sources, None)

    def passthrough(self, name: str) -> Callable:
        """A call of part ``name`` for a loss that needs gradients through it but does not
        train it (a generator's loss through the discriminator): its parameters are frozen
        while the graph is built, so backward computes no gradient for them, and it calls the
        engine's inner module, so DDP's reducer does not wait for them either. FSDP2 carries
        the frozen flag over to the gathered parameters and skips their reduce-scatter; ZeRO-3's
        module hooks still gather its partitions for forward and backward."""
        module = self.inner(name)

        def call(*args, **kwargs):
            trained = [p for p in module.parameters() if p.requires_grad]
            for p in trained:
                p.requires_grad_(False)
            try:
                return module(*args, **kwargs)
            finally:
                for p in trained:
                    p.requires_grad_(True)

        return call


class Task(ABC):
    config_class: ClassVar[type[TrainConfig]]
    """The recipe's config schema (TrainConfig plus its model/loss sections)."""
    data_kind: ClassVar[str]
    """Which shard kind the recipe reads: "audio" or "tokens"."""
    model_kind: ClassVar[Optional[ModelKind]] = None
    """What its main model is as an exported folder (``aurora.exported``): how ``aurora export``
    and ``model.init_from`` build it from a run's config; None: its runs cannot be exported."""
    convolutional: ClassVar[bool] = False
    """Whether the model's FLOPs are mostly convolutions (cuDNN's TF32 switch then decides an
    fp32 run's peak) rather than matmuls (torch's matmul precision decides it)."""

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

    def extra_parts(self) -> list[PartSpec]:
        """Models trained beside the main one, built after it (called once). Within a step,
        each extra part's micro-batches and update run before the main model's, in this order."""
        return []

    def frozen_parts(self, model: nn.Module) -> list[FrozenPartSpec]:
        """Models used but not trained, built after the trained parts (called once), given the
        freshly built main model ``model`` before any engine wraps it (an EMA target starts as
        its copy)."""
        return []

    def part_loss(self, part: str, models: "PartModels", batch: dict, carry: dict,
                  step: int) -> tuple[Optional[torch.Tensor], dict[str, torch.Tensor]]:
        """Loss of part ``part`` for one micro-batch of optimizer step ``step`` (0-based), given
        every part's wrapped model. ``carry`` is one dict per micro-batch, kept across the parts
        of a step (e.g. the generator's output from the discriminator's turn). A ``None`` loss
        means nothing to backpropagate (a part not trained yet); it must be the same on every
        rank. Single-model recipes only implement ``loss``."""
        return self.loss(models[MAIN_PART], batch)

    def after_step(self, models: PartModels, step: int) -> dict[str, float]:
        """Called on every rank after optimizer step ``step`` (1-based) with every part, for
        maintenance that must happen between steps, such as an EMA update (it may issue
        collectives: every rank calls it). Returns metrics."""
        return {}

    def counters(self) -> dict[str, float]:
        """This rank's running counts since the run began (kept in ``state_dict`` across
        resumes), logged summed over ranks under their names, e.g. ``data/truncated_text``."""
        return {}

    def state_dict(self) -> dict:
        """This rank's recipe state that a checkpoint must carry (beyond the model)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def loss_units(self, batch: dict) -> float:
        """What the micro-batch's mean loss is a mean over, counted (its weight in the step):
        the valid samples or frames (``lengths``' sum) unless the recipe says otherwise."""
        return float(batch["lengths"].sum())

    def batch_items(self, batch: dict) -> dict[str, float]:
        """Work counted for throughput, e.g. {"samples": B, "frames": N}; an entry
        ``MODEL_FLOPS`` (forward + backward FLOPs of the batch, padding included) gives the
        loop its TFLOP/s and MFU."""
        return {"samples": float(len(batch["keys"]))}

    def eval_batches(self) -> list[dict]:
        """The first ``trainer.eval_batches`` batches of ``data.eval_shards`` on this rank's
        device: the same batches at every evaluation."""
        from aurora.data import batch_to_device, build_loader

        data_cfg = dataclasses.replace(self.cfg.data, shards=self.cfg.data.eval_shards, eval_shards=None)
        loader = build_loader(data_cfg, self.data_kind, rank=0, world_size=1, seed=self.cfg.run.seed)
        return [batch_to_device(batch, self.env.device) for batch, _ in zip(loader, range(self.cfg.trainer.eval_batches))]

    def evaluate(self, checkpoint: Path) -> dict:
        """Held-out loss of the weights in ``checkpoint`` over ``eval_batches``, weighted by
        valid units as in training. Runs on rank 0 alone, on a plain copy of the model (no
        collectives), so a failure cannot leave ranks out of step; ``loss`` sees a model in eval
        mode. Values are floats, or paths of files to show as media (audio, images)."""
        model = self.build_model()
        load_model_weights(model, checkpoint)
        model.to(self.env.device).eval()
        loss_sum = units = 0.0
        with torch.no_grad():
            for batch in self.eval_batches():
                loss, _ = self.loss(model, batch)
                valid = float(batch["lengths"].sum())
                loss_sum += loss.item() * valid
                units += valid
        return {"eval/loss": loss_sum / units}

    def on_train_end(self, run_dir: Path) -> None:
        """Called on every rank after the final checkpoint, for this rank's share of the
        end-of-run outputs (samples). No collectives: a rank whose outputs fail (a non-fatal
        error) must not leave the others waiting."""

    def after_train_end(self, run_dir: Path) -> None:
        """Called on rank 0 once every rank's ``on_train_end`` returned (e.g. index the samples)."""
