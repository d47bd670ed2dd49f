"""Recipe: an RVQ audio codec trained as a GAN (DAC / EnCodec recipe).

One optimizer step has two parts (``Task.extra_parts``): the discriminator's update, then the
generator's (the codec). Per micro-batch:

- discriminator turn: the codec reconstructs the batch; the discriminator sees real and
  reconstructed audio (detached) in one forward and takes an LSGAN or hinge loss;
- generator turn (after the discriminator's update): multi-scale mel L1 (and optionally waveform
  L1), adversarial and feature-matching losses through the updated discriminator, plus the
  quantizer's commitment and codebook losses; fixed weights, or EnCodec's gradient balancer for
  the losses of the reconstruction.

With one micro-batch per step the generator's forward of the discriminator turn is kept for the
generator's backward (one forward per step, as DAC); with accumulation each turn runs its own
forward, so no micro-batch's graph outlives its backward. Every decision (the discriminator's
start step, quantizer dropout draws, dead-code resets) depends on the step and seeds only, never
on one rank's numbers, so the collectives of every rank stay in step. Padding beyond each
clip's length is zeroed in the reconstruction before the discriminator sees it, so real and
fake differ only in the audio.

``gan.enabled=false`` trains the codec on reconstruction alone (one part, any engine).
"""

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from aurora.losses.audio import MultiScaleMelLoss, masked_l1
from aurora.losses.balancer import Balancer
from aurora.losses.gan import discriminator_loss, feature_matching_loss, generator_adversarial_loss
from aurora.metrics.codec_quality import measure_quality
from aurora.models.codec import Codec, CodecOutput, Discriminator, codebook_usage
from aurora.perf.flops import codec_train_flops, discriminator_train_flops
from aurora.runs import load_model_weights
from aurora.tasks.base import MAIN_PART, MODEL_FLOPS, PartModels, PartSpec, Task
from aurora.tasks.codec.artifacts import write_reconstructions
from aurora.tasks.codec.config import DISCRIMINATOR, CodecTrainConfig
from aurora.tasks.codec.dead_codes import DeadCodeReset
from aurora.tasks.codec.load import CODEC, load_codec

_FLOPS_PER_SECOND: dict[str, int] = {}
"""Counted FLOPs per second of audio, by architecture: a count takes seconds (every op of a
forward and backward through FlopCounterMode), and a process may build the same recipe again
(evaluation, tests)."""


def train_flops_per_second(cfg: CodecTrainConfig) -> int:
    """Forward + backward FLOPs of the step per second of audio (the codec's and, with the GAN,
    the discriminator's), counted once per architecture on fresh models on the meta device:
    FLOPs depend on shapes alone, and no real arithmetic or initialisation runs (nor moves the
    training random streams)."""
    key = repr((cfg.model, cfg.discriminator if cfg.gan.enabled else None))
    if key not in _FLOPS_PER_SECOND:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            flops = codec_train_flops(Codec(cfg.model), seconds=1.0)
            if cfg.gan.enabled:
                flops += discriminator_train_flops(Discriminator(cfg.discriminator), cfg.model.sample_rate)
        _FLOPS_PER_SECOND[key] = flops
    return _FLOPS_PER_SECOND[key]


def _valid_only(audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero every sample beyond each item's length."""
    return audio * (torch.arange(audio.shape[-1], device=audio.device) < lengths[:, None])[:, None, :]


def _halves(outputs: list[list[torch.Tensor]]) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Split the discriminator's outputs of a [real; fake] batch into those of each half."""
    real = [[f.chunk(2)[0] for f in maps] for maps in outputs]
    fake = [[f.chunk(2)[1] for f in maps] for maps in outputs]
    return real, fake


class CodecTask(Task):
    config_class = CodecTrainConfig
    data_kind = "audio"
    model_kind = CODEC
    convolutional = True

    def __init__(self, cfg: CodecTrainConfig, env):
        super().__init__(cfg, env)
        lc = cfg.loss
        self.mel_loss = MultiScaleMelLoss(cfg.model.sample_rate, lc.mel_n_ffts, lc.mel_n_mels).to(env.device)
        m = cfg.model
        self.dead_codes = DeadCodeReset(m.n_q, m.codebook_size, m.codebook_dim, cfg.quantizer.dead_code_every,
                                        cfg.run.seed, env.device)
        self.dropout_rng = torch.Generator(device=env.device).manual_seed(cfg.run.seed * 1_000_003 + env.rank)
        """Quantizer-dropout draws: each rank its own stream, checkpointed with the task."""
        self.balancer = None
        if lc.balancer:
            weights = {"mel": lc.mel_weight, "waveform": lc.waveform_weight, "adversarial": lc.adversarial_weight,
                       "feature_matching": lc.feature_matching_weight}
            self.balancer = Balancer({k: w for k, w in weights.items() if w > 0}, total_norm=lc.balancer_total_norm,
                                     ema_decay=lc.balancer_ema_decay)

    def build_model(self) -> nn.Module:
        return Codec(self.cfg.model)

    def shard_units(self, model: Codec) -> list[nn.Module]:
        return model.shard_units()

    def extra_parts(self) -> list[PartSpec]:
        if not self.cfg.gan.enabled:
            return []
        disc = Discriminator(self.cfg.discriminator)
        return [PartSpec(DISCRIMINATOR, disc, disc.shard_units(), self.cfg.gan.optim, self.cfg.gan.clip_grad_norm)]

    def _reconstruct(self, codec: nn.Module, batch: dict) -> CodecOutput:
        return codec(batch["audio"], generator=self.dropout_rng if codec.training else None)

    def loss(self, model: nn.Module, batch: dict):
        """Reconstruction and quantizer losses alone (gan.enabled=false, and evaluation)."""
        return self._generator_loss(model, None, batch, self._reconstruct(model, batch))

    def part_loss(self, part: str, models: PartModels, batch: dict, carry: dict, step: int):
        gan = self.cfg.gan.enabled and step >= self.cfg.gan.start_step
        if part == DISCRIMINATOR:
            if not gan:
                return None, {}
            keep = self.cfg.trainer.grad_accum_steps == 1
            with torch.set_grad_enabled(keep):
                out = self._reconstruct(models[MAIN_PART], batch)
            if keep:
                carry["out"] = out
            fake = _valid_only(out.recon.detach(), batch["lengths"])
            real, fake = _halves(models[DISCRIMINATOR](torch.cat([batch["audio"], fake.to(batch["audio"].dtype)])))
            return discriminator_loss(real, fake, self.cfg.loss.adversarial), {}
        out = carry.pop("out") if "out" in carry else self._reconstruct(models[MAIN_PART], batch)
        return self._generator_loss(models[MAIN_PART], models.passthrough(DISCRIMINATOR) if gan else None, batch, out)

    def _generator_loss(self, codec: nn.Module, discriminator: Callable | None, batch: dict, out: CodecOutput):
        audio, lengths = batch["audio"], batch["lengths"]
        lc = self.cfg.loss
        recon = _valid_only(out.recon, lengths)
        losses = {"mel": self.mel_loss(recon, audio, lengths), "waveform": masked_l1(recon.float(), audio, lengths)}
        weights = {"mel": lc.mel_weight, "waveform": lc.waveform_weight}
        if discriminator is not None:
            fake = discriminator(recon)
            with torch.no_grad():
                real = discriminator(audio)
            losses["adversarial"] = generator_adversarial_loss(fake, lc.adversarial)
            losses["feature_matching"] = feature_matching_loss(real, fake)
            weights.update(adversarial=lc.adversarial_weight, feature_matching=lc.feature_matching_weight)
        metrics = {f"loss/{name}": value for name, value in losses.items()}
        if self.balancer is not None and codec.training:
            balanced = {k: v for k, v in losses.items() if k in self.balancer.weights}
            # As a mean over the batch, like the other losses: a step on N ranks is one process's.
            total = self.balancer.surrogate(balanced, recon, grad_scale=1 / recon.shape[0])
            metrics.update({f"balancer/{k}": v for k, v in self.balancer.metrics.items()})
        else:
            total = sum(weights[k] * v for k, v in losses.items() if weights[k])
        total = total + lc.commitment_weight * out.commitment_loss + lc.codebook_weight * out.codebook_loss
        metrics.update({"loss/commitment": out.commitment_loss, "loss/codebook": out.codebook_loss})
        if codec.training:  # evaluation must not change which codes count as dead
            self.dead_codes.observe(out.codes, out.lookup_inputs)
        usage = codebook_usage(out.codes, self.cfg.model.codebook_size)
        metrics.update({f"perplexity/q{i}": p for i, p in enumerate(usage)})
        metrics["quantizer/stages_used"] = out.n_q_used.float().mean()
        return total, metrics

    def after_step(self, models: PartModels, step: int) -> dict[str, float]:
        codebooks = [vq.codebook.weight for vq in models.inner(MAIN_PART).quantizer.quantizers]
        return {"codes_reset": float(self.dead_codes.maybe_reset(step, codebooks, models.engines[MAIN_PART]))}

    def state_dict(self) -> dict:
        state = {"dead_codes": self.dead_codes.state_dict(), "dropout_rng": self.dropout_rng.get_state()}
        if self.balancer is not None:
            state["balancer"] = self.balancer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.dead_codes.load_state_dict(state["dead_codes"])
        self.dropout_rng.set_state(state["dropout_rng"])
        if self.balancer is not None:
            self.balancer.load_state_dict(state["balancer"])

    def batch_items(self, batch: dict) -> dict[str, float]:
        padded_seconds = batch["audio"].shape[0] * batch["audio"].shape[-1] / self.cfg.model.sample_rate
        return {"samples": float(len(batch["keys"])),
                "audio_seconds": batch["lengths"].sum().item() / self.cfg.model.sample_rate,
                MODEL_FLOPS: padded_seconds * train_flops_per_second(self.cfg)}

    def evaluate(self, checkpoint: Path) -> dict:
        """The held-out reconstruction loss, the DAC-paper quality metrics (mel and STFT
        distance, SI-SDR, codebook usage, bitrate; PESQ and STOI at 16 kHz) through the token
        path (encode, decode), and reconstructions of the first ``eval_clips`` clips (FLAC +
        log-mel PNG in RUN/samples/step_N, returned as media)."""
        metrics = super().evaluate(checkpoint)
        codec = Codec(self.cfg.model)
        load_model_weights(codec, checkpoint)
        codec.to(self.env.device).eval()
        batches = self.eval_batches()
        metrics.update(measure_quality(codec, batches))
        out_dir = Path(self.cfg.run.dir) / "samples" / Path(checkpoint).name
        for path in write_reconstructions(codec, batches[0], out_dir, self.cfg.eval_clips):
            metrics[f"media/{path.name}"] = path
        return metrics

    def on_train_end(self, run_dir: Path) -> None:
        """Reconstruct a few training clips into RUN/samples for listening (rank 0)."""
        if not self.env.is_main:
            return
        from aurora.data import build_loader

        codec = load_codec(run_dir, trust=True).codec.to(self.env.device)  # the job's own run.dir
        batch = next(iter(build_loader(self.cfg.data, "audio", rank=0, world_size=1, seed=self.cfg.run.seed)))
        write_reconstructions(codec, batch, Path(run_dir) / "samples", self.cfg.eval_clips)
