"""Sampling clips from a diffusion teacher or an LCM student run: the latent side of ``aurora generate``.

    aurora generate RUN --caption "a low tone" --out DIR --trust-checkpoint
                    [--steps N] [--cfg-scale S] [--sampler ddim|dpm] [--max-seconds 2] [--seed 0] ...

RUN is a ``diffusion`` or ``lcm`` training run (or one of its checkpoints), read only with
``--trust-checkpoint`` (``aurora.exported``). Every sampler is diffusers':

- a teacher: ``--steps`` (default 50) of DDIM (``--sampler ddim``, eta 0) or DPM-Solver++
  (``dpm``, second order), both on "trailing" timesteps (the first step starts at t = 999), with
  classifier-free guidance uncond + S (cond - uncond) (``--cfg-scale``, default 4), the
  conditional and the empty caption in one forward;
- a student: ``LCMScheduler``'s multistep consistency sampling, ``--steps`` (default 2) of the
  N timesteps it was distilled on (``lcm.ddim_timesteps``), the guidance scale S given to its
  guidance embedding (one forward per step); S must lie in the distilled range
  [lcm.w_min, lcm.w_max] (default: w_min): outside it a student has learnt nothing.

Prompt i starts from its own noise, seeded ``seed + i`` (frame-major, as in training), so any
launch, batching or rank writes the same clips. The latents decode with the codec the run's
latent shards name (``Codec.decode_latents``). Output as the LM's (``aurora.generation``):
``sample_{i:05d}.flac``, ``sample_{i:05d}.latents.npy`` (float16 [latent_dim, frames]) and
``samples.jsonl``.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, LCMScheduler

from aurora.config import ConfigError
from aurora.exported import load_model, run_of
from aurora.models.audio_lm import text_overflow
from aurora.precision import bf16_autocast
from aurora.tasks.diffusion import DIT, _DIFFUSERS_BETAS, DiffusionTrainConfig, diffusion_run_config, example_noise

SAMPLERS = ("ddim", "dpm")
TEACHER_STEPS, STUDENT_STEPS, TEACHER_CFG = 50, 2, 4.0


@dataclass
class LatentSettings:
    """How one set of clips is sampled (recorded with each sample)."""

    steps: int
    cfg_scale: float
    sampler: str
    seconds: float


def check_settings(cfg: DiffusionTrainConfig, steps: int | None, cfg_scale: float | None, sampler: str | None,
                   seconds: float) -> LatentSettings:
    """The settings for a run of config ``cfg``, or ConfigError naming what it supports."""
    if cfg.task == "lcm":
        lcm = cfg.lcm
        steps = STUDENT_STEPS if steps is None else steps
        if not 1 <= steps <= lcm.ddim_timesteps:
            raise ConfigError(f"--steps {steps}: an LCM student samples in 1 to {lcm.ddim_timesteps} steps (the "
                              f"timesteps it was distilled on, lcm.ddim_timesteps), typically 1, 2 or 4")
        if sampler not in (None, "lcm"):
            raise ConfigError(f"--sampler {sampler}: an LCM student samples with LCM multistep sampling only; drop "
                              f"--sampler")
        cfg_scale = lcm.w_min if cfg_scale is None else cfg_scale
        if not lcm.w_min <= cfg_scale <= lcm.w_max:
            raise ConfigError(f"--cfg-scale {cfg_scale:g}: this student was distilled for guidance scales in "
                              f"[{lcm.w_min:g}, {lcm.w_max:g}] (lcm.w_min, lcm.w_max): pick one inside")
        return LatentSettings(steps, cfg_scale, "lcm", seconds)
    steps = TEACHER_STEPS if steps is None else steps
    if not 1 <= steps <= cfg.noise.num_train_timesteps:
        raise ConfigError(f"--steps {steps}: a diffusion teacher samples in 1 to {cfg.noise.num_train_timesteps} steps")
    if sampler not in (None, *SAMPLERS):
        raise ConfigError(f"--sampler {sampler}: a diffusion teacher samples with ddim or dpm (DPM-Solver++)")
    return LatentSettings(steps, TEACHER_CFG if cfg_scale is None else cfg_scale, sampler or "ddim", seconds)


def scheduler(cfg: DiffusionTrainConfig, sampler: str):
    """diffusers' scheduler of ``sampler`` on the run's noise process."""
    noise = cfg.noise
    common = dict(num_train_timesteps=noise.num_train_timesteps, beta_start=noise.beta_start, beta_end=noise.beta_end,
                  beta_schedule=_DIFFUSERS_BETAS[noise.beta_schedule], prediction_type=noise.prediction.value)
    if sampler == "lcm":
        return LCMScheduler(**common, original_inference_steps=cfg.lcm.ddim_timesteps, clip_sample=False,
                            timestep_scaling=cfg.lcm.timestep_scaling)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", timestep_spacing="trailing")
    return DDIMScheduler(**common, clip_sample=False, timestep_spacing="trailing")


class LatentSampler:
    """A DiT run's model (an LCM student or a diffusion teacher) and the codec of its latents, on
    ``device`` (bf16 autocast on a GPU)."""

    member, dtype = "latents", np.float16
    """What ``aurora.generation.write_samples`` stores beside each clip, and as what."""

    def __init__(self, path: str | Path, device: torch.device, step: int | None = None, *, trust: bool,
                 what: str = "RUN"):
        from aurora.tasks.codec.load import load_codec
        from aurora.data.manifest import resolve_shards

        self.cfg = diffusion_run_config(run_of(Path(path)))
        loaded = load_model(path, DIT, trust=trust, what=what, step=step)
        self.checkpoint = loaded.checkpoint
        self.model = loaded.model.to(device).eval()
        _, manifest = resolve_shards(self.cfg.data.shards)
        self.codec = load_codec(Path(self.cfg.data.shards) / manifest["codec"], what=f"{what}'s codec").codec.to(device)
        self.device = device

    def text_tokens(self, captions: list[str]) -> torch.Tensor:
        from aurora.models.audio_lm import encode_text

        long = text_overflow(captions, self.cfg.model.max_text_len)
        if long:
            raise ConfigError(f"caption {captions[long[0]][:40]!r}... is longer than the {self.cfg.model.max_text_len - 2} "
                              f"bytes this model reads (model.max_text_len): shorten it")
        return encode_text(captions, self.cfg.model.max_text_len).to(self.device)

    def _output(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, empty: torch.Tensor,
                settings: LatentSettings) -> torch.Tensor:
        batch = len(x)
        steps = t.reshape(1).expand(batch).to(self.device)
        if settings.sampler == "lcm":
            return self.model(x, steps, text, guidance=torch.full((batch,), settings.cfg_scale, device=self.device))
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([steps, steps]), torch.cat([text, empty])).chunk(2)
        return uncond + settings.cfg_scale * (cond - uncond)

    @torch.no_grad()
    def sample(self, captions: list[str], seeds: list[int], settings: LatentSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents [B, latent_dim, frames] and audio [B, 1, samples] (on the CPU) for one batch."""
        latents = self.latents(captions, seeds, settings)
        return latents.cpu(), self.codec.decode_latents(latents).float().cpu()

    @torch.no_grad()
    def latents(self, captions: list[str], seeds: list[int], settings: LatentSettings) -> torch.Tensor:
        """Generated latents [B, latent_dim, frames] (on the device) for one batch."""
        frames = max(1, round(settings.seconds * self.codec.cfg.frame_rate))
        text, empty = self.text_tokens(captions), self.text_tokens([""] * len(captions))
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        x = torch.stack([example_noise(g, self.cfg.model.latent_dim, frames) for g in generators]).to(self.device)
        sched = scheduler(self.cfg, settings.sampler)
        sched.set_timesteps(settings.steps, device=self.device)
        x = x * sched.init_noise_sigma
        with bf16_autocast(self.device.type, enabled=self.device.type == "cuda"):
            for t in sched.timesteps:
                output = self._output(sched.scale_model_input(x, t), t, text, empty, settings).float()
                if settings.sampler == "lcm":  # the next sample is noised again from each prompt's own generator
                    step = sched.step(output, t, x, generator=generators)
                    x, denoised = step.prev_sample, step.denoised
                else:
                    x = sched.step(output, t, x).prev_sample
        return denoised if settings.sampler == "lcm" else x
