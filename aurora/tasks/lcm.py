"""Recipe: latent consistency distillation (LCM, AudioLCM) of a diffusion teacher into a few-step student.

The algorithm of diffusers' LCM script (examples/consistency_distillation/
train_lcm_distill_sd_wds.py), per example: an index n of the DDIM solver's N timesteps (N =
``lcm.ddim_timesteps`` of 1000, skip k = 1000 / N), a guidance scale w ~ U[w_min, w_max], noise.
The latents are noised to t = (n + 1) k - 1; the student, given w through its guidance
embedding, predicts the clean latents there, f(x_t, t) = c_skip(t) x_t + c_out(t) x0_θ. The
teacher, with classifier-free guidance at w (conditional and empty caption in one forward),
takes one DDIM step from t to s = t - k; the EMA target predicts f(x_s, s) without gradients; the
loss is the pseudo-Huber (or L2) distance between the two. c_skip/c_out (σ_data 0.5, timestep
scaling 10) make f(x, 0) = x. After each step the target follows the student, μ = ``lcm.ema_decay``.

Guidance is written uncond + w (cond - uncond), as ``--cfg-scale`` is for the teacher (diffusers'
script writes cond + w (cond - uncond), its w one less), and the student samples at the w it is given.

Distributed beyond the script: the teacher is a frozen part, sharded like the student (FSDP2,
HSDP, ZeRO-3), never whole on a rank; the EMA target is a frozen part of the student's shapes,
updated shard by shard on each rank's own elements (``PartModels.ema_update``: no collective).
Checkpoints hold the student, the target and the optimizer; the teacher is loaded from its run at
every start, and its weights' id is recorded and checked on resume. The student starts as the
teacher: its weights, plus a guidance embedding whose last layer is zero.
"""

import copy
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import nn

from aurora.config import ConfigError
from aurora.data.manifest import resolve_shards
from aurora.exported import TRUST_FIELD, ModelLoadError, is_exported, load_weights, read_config, run_of
from aurora.losses.diffusion import (DDIMSolver, boundary_scalings, consistency_distance, predicted_noise,
                                     predicted_x0)
from aurora.models.dit import GUIDANCE_KEYS, DiT
from aurora.ranges import ranged
from aurora.runs import resolve_checkpoint
from aurora.tasks.base import MAIN_PART, FrozenPartSpec, PartModels
from aurora.tasks.diffusion import (DIT, DiffusionModelConfig, DiffusionTask, DiffusionTrainConfig,
                                    diffusion_run_config, example_noise, shape_fields)

TEACHER, TARGET = "teacher", "target"
"""The frozen parts' names."""


class ConsistencyLoss(str, Enum):
    huber = "huber"
    l2 = "l2"


@dataclass
class LCMConfig:
    """Latent consistency distillation (defaults: diffusers' LCM script, AudioLCM's guidance range)."""

    ddim_timesteps: int = ranged(50, 1)
    """N: the teacher's DDIM solver runs over N of the train timesteps (skip k = 1000 / N)."""
    w_min: float = ranged(4.0, 0)
    """Smallest guidance scale w a student learns (drawn uniformly per example)."""
    w_max: float = ranged(12.0, 0)
    """Largest guidance scale w."""
    loss: ConsistencyLoss = ConsistencyLoss.huber
    """huber (pseudo-Huber, sqrt(d^2 + c^2) - c) or l2."""
    huber_c: float = ranged(0.001, above=0)
    """huber: its c."""
    ema_decay: float = ranged(0.95, 0, 1)
    """μ: after each step, target = μ target + (1 - μ) student."""
    sigma_data: float = ranged(0.5, above=0)
    """σ_data of the boundary scalings."""
    timestep_scaling: float = ranged(10.0, above=0)
    """The factor timesteps are scaled by in c_skip/c_out (LCM's 10)."""

    def __post_init__(self):
        if self.w_min > self.w_max:
            raise ValueError(f"lcm.w_min={self.w_min} is above lcm.w_max={self.w_max}: give w_min <= w_max")


@dataclass
class LCMModelConfig(DiffusionModelConfig):
    teacher: str = MISSING
    """The diffusion teacher: a diffusion training run (its latest complete checkpoint) or one of
    its checkpoints, read with ``run.trust_checkpoint=true``. The model section must have its shape."""
    guidance_embedding: bool = True
    """Must stay true: the student takes w through its guidance embedding."""
    caption_dropout: float = 0.0
    """Must stay 0: the student learns the teacher's guided predictions for the real captions."""


@dataclass
class LCMTrainConfig(DiffusionTrainConfig):
    task: str = "lcm"
    model: LCMModelConfig = field(default_factory=LCMModelConfig)
    lcm: LCMConfig = field(default_factory=LCMConfig)


class LCMTask(DiffusionTask):
    config_class = LCMTrainConfig

    def __init__(self, cfg: LCMTrainConfig, env):
        super().__init__(cfg, env)
        model = cfg.model
        if not model.guidance_embedding or model.caption_dropout != 0:
            raise ConfigError("config: an LCM student needs model.guidance_embedding=true and model.caption_dropout=0")
        num_train = cfg.noise.num_train_timesteps
        if num_train % cfg.lcm.ddim_timesteps:
            raise ConfigError(f"config: lcm.ddim_timesteps={cfg.lcm.ddim_timesteps} must divide "
                              f"noise.num_train_timesteps={num_train}")
        if cfg.trainer.eval_every:
            raise ConfigError("config: trainer.eval_every must be 0 for lcm: a student has no held-out loss of its own; "
                              "measure it with tools/bench/lcm_quality.py")
        self.teacher = Path(model.teacher)
        self._check_teacher()
        self.solver = DDIMSolver(self.scheduler.alphas_cumprod, num_train, cfg.lcm.ddim_timesteps)

    def _trust(self) -> dict:
        return {"trust": self.cfg.run.trust_checkpoint, "what": "model.teacher", "how_to_trust": TRUST_FIELD}

    def _check_teacher(self) -> None:
        """Refuse a teacher that is missing, untrusted, of another shape or noise process, or
        trained on the latents of another codec."""
        if is_exported(self.teacher):
            raise ConfigError(f"config: model.teacher={self.teacher} is an exported DiT, which records neither its noise "
                              f"process nor its codec: give the teacher's training run (run.trust_checkpoint=true)")
        shape = read_config(self.teacher, DIT, **self._trust())  # missing, not a run, untrusted: ModelLoadError
        try:
            resolve_checkpoint(self.teacher)
        except FileNotFoundError as e:
            raise ModelLoadError(f"model.teacher {str(e).splitlines()[0]}: train the teacher until it saves a "
                                 f"checkpoint (trainer.checkpoint_every), or point at a run that has one") from None
        differ = [n for n, v in shape_fields(self.cfg.model).items() if shape_fields(shape)[n] != v]
        if differ:
            detail = ", ".join(f"model.{n}={getattr(self.cfg.model, n)!r} but {getattr(shape, n)!r}" for n in differ)
            raise ConfigError(f"config: the student's shape differs from its teacher {self.teacher}'s ({detail}): set "
                              f"the model section to the teacher's shape")
        run = diffusion_run_config(run_of(self.teacher))
        if run.noise != self.cfg.noise:
            raise ConfigError(f"config: the noise section differs from the teacher's ({run.noise} in "
                              f"{run_of(self.teacher)}/config.yaml): distil with the teacher's noise process")
        try:
            _, theirs = resolve_shards(run.data.shards)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"config: the teacher's latent shards ({run.data.shards}) cannot be read ({e}), so its "
                              f"codec cannot be checked against data.shards': make them readable") from None
        if (theirs or {}).get("codec_id") != self.manifest.get("codec_id"):
            raise ConfigError(f"config: the teacher learnt the latents of codec {(theirs or {}).get('codec_id')} "
                              f"({run.data.shards}), but data.shards={self.cfg.data.shards} holds those of codec "
                              f"{self.manifest.get('codec_id')}: distil on latents of the teacher's codec")

    def _teacher_model(self) -> DiT:
        config = shape_fields(self.cfg.model)
        return DiT(DIT.config_class(**config, guidance_embedding=False))

    def build_model(self) -> nn.Module:
        """The student: the teacher's weights and a zero guidance embedding (the teacher is read
        whole here, once, as ``model.init_from`` is; the frozen part loads it again into its shards)."""
        teacher = self._teacher_model()
        load_weights(teacher, self.teacher, **self._trust())
        student = DiT(self.cfg.model)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not name.startswith(GUIDANCE_KEYS) for name in missing):
            raise ModelLoadError(f"model.teacher {self.teacher} does not fit the student: missing {missing}, "
                                 f"unexpected {unexpected}")
        return student

    def frozen_parts(self, model: nn.Module) -> list[FrozenPartSpec]:
        teacher, target = self._teacher_model(), copy.deepcopy(model)
        return [FrozenPartSpec(TEACHER, teacher, teacher.shard_units(), updated=False, source=self.teacher),
                FrozenPartSpec(TARGET, target, target.shard_units(), updated=True)]

    def _draws(self, batch: dict, step: int | str):
        """Each example's solver index [B], guidance scale [B] and noise [B, C, T]."""
        latents = batch["latents"]
        lcm = self.cfg.lcm
        index, w, noise = [], [], []
        for g in self.generators(batch, step):
            index.append(torch.randint(0, lcm.ddim_timesteps, (1,), generator=g))
            w.append(lcm.w_min + (lcm.w_max - lcm.w_min) * torch.rand(1, generator=g))
            noise.append(example_noise(g, *latents.shape[1:]))
        device = latents.device
        return torch.cat(index).to(device), torch.cat(w).to(device), torch.stack(noise).to(device)

    def consistency_loss(self, student: nn.Module, teacher: nn.Module, target: nn.Module, batch: dict,
                         step: int | str) -> torch.Tensor:
        latents, lengths = batch["latents"], batch["lengths"]
        lcm, prediction = self.cfg.lcm, self.cfg.noise.prediction
        alphas = self.scheduler.alphas_cumprod.to(latents.device)
        index, w, noise = self._draws(batch, step)
        start = self.solver.timesteps.to(latents.device)[index]
        prev = (start - self.solver.skip).clamp(min=0)
        noisy = self.scheduler.add_noise(latents, noise, start)
        text = self.text_tokens(batch["text"])
        c_skip_start, c_out_start = boundary_scalings(start, lcm.sigma_data, lcm.timestep_scaling)
        out = student(noisy, start, text, lengths, guidance=w)
        prediction_at_start = c_skip_start * noisy + c_out_start * predicted_x0(out, start, noisy, prediction, alphas)
        with torch.no_grad():
            both = teacher(torch.cat([noisy, noisy]), torch.cat([start, start]),
                           torch.cat([text, self.text_tokens([""] * len(text))]), torch.cat([lengths, lengths]))
            sample, steps = torch.cat([noisy, noisy]), torch.cat([start, start])
            x0_c, x0_u = predicted_x0(both, steps, sample, prediction, alphas).chunk(2)
            eps_c, eps_u = predicted_noise(both, steps, sample, prediction, alphas).chunk(2)
            scale = w[:, None, None]
            x_prev = self.solver.step(x0_u + scale * (x0_c - x0_u), eps_u + scale * (eps_c - eps_u), index)
            c_skip, c_out = boundary_scalings(prev, lcm.sigma_data, lcm.timestep_scaling)
            target_out = target(x_prev, prev, text, lengths, guidance=w)
            goal = c_skip * x_prev + c_out * predicted_x0(target_out, prev, x_prev, prediction, alphas)
        huber_c = lcm.huber_c if lcm.loss == ConsistencyLoss.huber else None
        return consistency_distance(prediction_at_start, goal, lengths, huber_c)

    def part_loss(self, part: str, models: PartModels, batch: dict, carry: dict, step: int):
        return self.consistency_loss(models[MAIN_PART], models[TEACHER], models[TARGET], batch, step), {}

    def loss(self, model: nn.Module, batch: dict):
        raise NotImplementedError("an LCM student has no held-out loss (trainer.eval_every is refused): measure it "
                                  "with tools/bench/lcm_quality.py")

    def after_step(self, models: PartModels, step: int) -> dict[str, float]:
        models.ema_update(TARGET, MAIN_PART, self.cfg.lcm.ema_decay)
        return {}
