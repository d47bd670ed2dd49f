"""Recipe: a latent diffusion teacher, a DiT (aurora.models.dit) on codec latent shards.

Each clip's latents x0 (``data_prep.tokenize --latents``) are noised to a timestep t drawn
uniformly from 1000, x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, by diffusers' ``DDPMScheduler``
(its linear or cosine β schedule); the DiT, given x_t, t and the caption, predicts ε or the
velocity v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x0 (``noise.prediction``), and the loss is the mean
squared error over valid frames. Some captions are dropped to the empty one
(``model.caption_dropout``), which teaches the unconditional model classifier-free guidance
samples against.

Every draw of an example (its t, its noise, whether its caption drops) comes from a generator
seeded by (seed, step, key): whichever rank, micro-batch or worker an example lands in, and after
any resume, it trains on the same numbers, so 1 process and N ranks take the same steps.
"""

import dataclasses
import hashlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import nn

from aurora.config import ConfigError
from aurora.config.schema import TrainConfig
from aurora.data.config import DataError
from aurora.data.manifest import resolve_shards
from aurora.exported import ModelKind, ModelLoadError
from aurora.losses.diffusion import Prediction, diffusion_loss
from aurora.models.audio_lm import encode_text, text_overflow
from aurora.models.dit import DiT, DiTConfig
from aurora.ranges import ranged
from aurora.tasks.base import MAIN_PART, Task


class BetaSchedule(str, Enum):
    linear = "linear"
    cosine = "cosine"


_DIFFUSERS_BETAS = {BetaSchedule.linear: "linear", BetaSchedule.cosine: "squaredcos_cap_v2"}
"""Each schedule's name in diffusers (cosine: Nichol & Dhariwal's, ``squaredcos_cap_v2``)."""


@dataclass
class NoiseConfig:
    """The forward process and what the network predicts; a student distils with its teacher's."""

    prediction: Prediction = Prediction.v_prediction
    """epsilon (the noise) or v_prediction (the velocity)."""
    beta_schedule: BetaSchedule = BetaSchedule.cosine
    """linear (β from beta_start to beta_end) or cosine (ᾱ a squared cosine, β capped at 0.999)."""
    num_train_timesteps: int = ranged(1000, 2)
    """Discrete timesteps of the forward process."""
    beta_start: float = ranged(1e-4, above=0, high=1)
    """linear: the first β."""
    beta_end: float = ranged(0.02, above=0, high=1)
    """linear: the last β."""

    def scheduler(self) -> DDPMScheduler:
        """diffusers' scheduler of this process (no sample clipping: latents are not images in [-1, 1])."""
        return DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start,
                             beta_end=self.beta_end, beta_schedule=_DIFFUSERS_BETAS[self.beta_schedule],
                             prediction_type=self.prediction.value, clip_sample=False)


@dataclass
class DiffusionModelConfig(DiTConfig):
    caption_dropout: float = ranged(0.1, 0, 1)
    """Training only: the probability that an example's caption is replaced by the empty one."""


@dataclass
class DiffusionTrainConfig(TrainConfig):
    task: str = "diffusion"
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)


def diffusion_run_config(run: Path) -> DiffusionTrainConfig:
    """The config of a diffusion run (a teacher, or a recipe that trains a DiT: lcm)."""
    from aurora.tasks import run_config

    try:
        return run_config(run, DiffusionTrainConfig, "a diffusion run (task: diffusion or lcm)")
    except (ConfigError, FileNotFoundError) as e:
        raise ModelLoadError(str(e)) from None


DIT = ModelKind("dit", DiTConfig, DiT, lambda dit: dit.config, lambda run: diffusion_run_config(run).model)


def example_generator(seed: int, step: int | str, key: str) -> torch.Generator:
    """The generator of one example's draws at one step: a hash of (seed, step, key)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def example_noise(generator: torch.Generator, channels: int, frames: int) -> torch.Tensor:
    """[channels, frames] standard normal, drawn frame-major: an example's noise on its valid
    frames is the same whatever padding its batch has."""
    return torch.randn(frames, channels, generator=generator).T


EVAL_STEP = "eval"
"""The step whose draws every evaluation uses: the same noise at every evaluation."""


class DiffusionTask(Task):
    config_class = DiffusionTrainConfig
    data_kind = "latents"

    def __init__(self, cfg: DiffusionTrainConfig, env):
        super().__init__(cfg, env)
        self.manifest = self._check_latents(cfg.data.shards, "shards")
        if cfg.data.eval_shards is not None:
            self._check_latents(cfg.data.eval_shards, "eval_shards")
        self.scheduler = cfg.noise.scheduler()

    def _check_latents(self, shards: str, name: str) -> dict:
        _, manifest = resolve_shards(shards)
        if manifest is None or manifest.get("kind") != "latents":
            held = "no manifest" if manifest is None else f"{manifest.get('kind')} shards"
            raise ConfigError(f"config: data.{name}={shards} holds {held}, not latent shards: make them with "
                              f"`python -m data_prep.tokenize --shards AUDIO --codec CODEC --out DIR --latents`")
        if manifest.get("latent_dim") != self.cfg.model.latent_dim:
            raise ConfigError(f"config: model.latent_dim={self.cfg.model.latent_dim} but the latent shards in {shards} "
                              f"have latent_dim={manifest.get('latent_dim')}: set model.latent_dim to match")
        return manifest

    def build_model(self) -> nn.Module:
        return DiT(self.cfg.model)

    def shard_units(self, model: DiT) -> list[nn.Module]:
        return model.shard_units()

    def text_tokens(self, captions: list[str]) -> torch.Tensor:
        """Captions as the DiT's text tokens; one longer than ``model.max_text_len`` is refused."""
        long = text_overflow(captions, self.cfg.model.max_text_len)
        if long:
            raise DataError(f"caption {captions[long[0]][:40]!r}... is {len(captions[long[0]].encode('utf-8'))} bytes; "
                            f"model.max_text_len={self.cfg.model.max_text_len} reads at most "
                            f"{self.cfg.model.max_text_len - 2}: raise model.max_text_len or shorten the captions")
        return encode_text(captions, self.cfg.model.max_text_len).to(self.env.device)

    def generators(self, batch: dict, step: int | str) -> list[torch.Generator]:
        return [example_generator(self.cfg.run.seed, step, key) for key in batch["keys"]]

    def _loss(self, model: nn.Module, batch: dict, step: int | str):
        latents, lengths = batch["latents"], batch["lengths"]
        channels, frames = latents.shape[1:]
        generators = self.generators(batch, step)
        timesteps = torch.cat([torch.randint(0, self.scheduler.config.num_train_timesteps, (1,), generator=g)
                               for g in generators]).to(latents.device)
        noise = torch.stack([example_noise(g, channels, frames) for g in generators]).to(latents.device)
        captions = batch["text"]
        if model.training and self.cfg.model.caption_dropout > 0:
            drops = [float(torch.rand(1, generator=g)) < self.cfg.model.caption_dropout for g in generators]
            captions = ["" if drop else caption for drop, caption in zip(drops, captions)]
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        output = model(noisy, timesteps, self.text_tokens(captions), lengths)
        loss = diffusion_loss(output, latents, noise, timesteps, self.scheduler, self.cfg.noise.prediction, lengths)
        return loss, {}

    def loss(self, model: nn.Module, batch: dict):
        """The loss of ``model`` on the batch at the evaluation's fixed draws (``EVAL_STEP``)."""
        return self._loss(model, batch, EVAL_STEP)

    def part_loss(self, part: str, models, batch: dict, carry: dict, step: int):
        return self._loss(models[MAIN_PART], batch, step)

    def batch_items(self, batch: dict) -> dict[str, float]:
        return {"samples": float(len(batch["keys"])), "frames": float(batch["lengths"].sum())}


def shape_fields(config: DiTConfig) -> dict:
    """What a DiT is (every DiTConfig field but the guidance embedding, which a student adds)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(DiTConfig) if f.name != "guidance_embedding"}
