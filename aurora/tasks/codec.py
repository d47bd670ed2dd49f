"""Recipe: an RVQ audio codec trained on reconstruction (multi-scale mel L1 + waveform L1)
plus the quantizer's commitment and codebook losses."""

import functools
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from aurora.config import ConfigError, load_config
from aurora.config.schema import TrainConfig
from aurora.models.codec import Codec, CodecConfig, codebook_usage
from aurora.tasks.audio_losses import MultiScaleMelLoss, masked_l1
from aurora.engines import Engine
from aurora.models.flops import codec_train_flops
from aurora.tasks.base import MODEL_FLOPS, Task
from aurora.tasks.dead_codes import DeadCodeReset
from aurora.train.checkpoint import load_model_weights


@dataclass
class CodecLossConfig:
    mel_weight: float = 1.0
    """Weight of the multi-scale log-mel L1."""
    waveform_weight: float = 1.0
    """Weight of the waveform L1."""
    commitment_weight: float = 0.25
    """Weight of the commitment loss (encoder towards its codes), summed over stages."""
    codebook_weight: float = 1.0
    """Weight of the codebook loss (codes towards the encoder), summed over stages."""
    mel_n_ffts: list[int] = field(default_factory=lambda: [256, 512, 1024])
    """STFT sizes of the mel scales (hop = n_fft / 4)."""
    mel_n_mels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """Mel bands per scale, one per entry of mel_n_ffts."""


@dataclass
class QuantizerMaintenanceConfig:
    dead_code_every: int = 10
    """Every N optimizer steps, codes that no rank used in those N steps are replaced by
    encoder outputs from the latest batch (0 disables)."""


@dataclass
class CodecTrainConfig(TrainConfig):
    task: str = "codec"
    model: CodecConfig = field(default_factory=CodecConfig)
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    quantizer: QuantizerMaintenanceConfig = field(default_factory=QuantizerMaintenanceConfig)


class CodecTask(Task):
    config_class = CodecTrainConfig
    data_kind = "audio"

    def __init__(self, cfg: CodecTrainConfig, env):
        super().__init__(cfg, env)
        if cfg.data.sample_rate != cfg.model.sample_rate:
            raise ConfigError(
                f"config: data.sample_rate ({cfg.data.sample_rate}) must equal model.sample_rate "
                f"({cfg.model.sample_rate}): the loader resamples to data.sample_rate"
            )
        lc = cfg.loss
        self.mel_loss = MultiScaleMelLoss(cfg.model.sample_rate, lc.mel_n_ffts, lc.mel_n_mels).to(env.device)
        m = cfg.model
        self.dead_codes = DeadCodeReset(m.n_q, m.codebook_size, m.codebook_dim, cfg.quantizer.dead_code_every,
                                        cfg.run.seed, env.device)

    def build_model(self) -> nn.Module:
        return Codec(self.cfg.model)

    def shard_units(self, model: Codec) -> list[nn.Module]:
        return model.shard_units()

    def loss(self, model: nn.Module, batch: dict):
        audio, lengths = batch["audio"], batch["lengths"]
        out = model(audio)
        lc = self.cfg.loss
        mel = self.mel_loss(out.recon, audio, lengths)
        wave = masked_l1(out.recon.float(), audio, lengths)
        total = (lc.mel_weight * mel + lc.waveform_weight * wave
                 + lc.commitment_weight * out.commitment_loss + lc.codebook_weight * out.codebook_loss)
        metrics = {"mel_l1": mel, "waveform_l1": wave, "commitment": out.commitment_loss,
                   "codebook": out.codebook_loss}
        if model.training:  # evaluation must not change which codes count as dead
            self.dead_codes.observe(out.codes, out.lookup_inputs)
        usage = codebook_usage(out.codes, self.cfg.model.codebook_size)
        metrics.update({f"perplexity/q{i}": p for i, p in enumerate(usage)})
        return total, metrics

    def after_step(self, model: nn.Module, engine: Engine, step: int) -> dict[str, float]:
        codec = engine.unwrap(model)
        codebooks = [vq.codebook.weight for vq in codec.quantizer.quantizers]
        return {"codes_reset": float(self.dead_codes.maybe_reset(step, codebooks, engine))}

    def state_dict(self) -> dict:
        return {"dead_codes": self.dead_codes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dead_codes.load_state_dict(state["dead_codes"])

    @functools.cached_property
    def _train_flops_per_second(self) -> int:
        """Forward + backward FLOPs per second of audio, counted once on a fresh CPU model (its
        initialisation must not move the training random streams)."""
        with torch.random.fork_rng(devices=[]):
            return codec_train_flops(self.build_model(), seconds=1.0)

    def batch_items(self, batch: dict) -> dict[str, float]:
        padded_seconds = batch["audio"].shape[0] * batch["audio"].shape[-1] / self.cfg.model.sample_rate
        return {"samples": float(len(batch["keys"])),
                "audio_seconds": batch["lengths"].sum().item() / self.cfg.model.sample_rate,
                MODEL_FLOPS: padded_seconds * self._train_flops_per_second}

    def on_train_end(self, run_dir: Path) -> None:
        """Reconstruct a few training clips into RUN/samples for listening."""
        from aurora.data import build_loader

        codec = codec_from_run(run_dir)
        batch = next(iter(build_loader(self.cfg.data, "audio", rank=0, world_size=1, seed=self.cfg.run.seed)))
        out_dir = Path(run_dir) / "samples"
        out_dir.mkdir(exist_ok=True)
        with torch.no_grad():
            recon = codec(batch["audio"][:4]).recon
        for i, key in enumerate(batch["keys"][:4]):
            n = int(batch["lengths"][i])
            sf.write(out_dir / f"{key}.orig.flac", batch["audio"][i, 0, :n].numpy(), codec.cfg.sample_rate)
            sf.write(out_dir / f"{key}.recon.flac", recon[i, 0, :n].clamp(-1, 1).numpy(), codec.cfg.sample_rate)


def codec_from_run(run_dir: str | Path) -> Codec:
    """The codec of a training run (its config.yaml and latest checkpoint), in eval mode."""
    cfg = load_config(CodecTrainConfig, Path(run_dir) / "config.yaml")
    codec = Codec(cfg.model)
    load_model_weights(codec, run_dir)
    return codec.eval()


def export_codec(codec: Codec, out_dir: str | Path) -> None:
    """Self-contained codec for token shard sets: config.yaml + model.safetensors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(codec.cfg)))
    save_file({k: v.contiguous() for k, v in codec.state_dict().items()}, out_dir / "model.safetensors")


def load_exported_codec(path: str | Path) -> Codec:
    path = Path(path)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CodecConfig),
                                              OmegaConf.load(path / "config.yaml")))
    codec = Codec(cfg)
    codec.load_state_dict(load_file(path / "model.safetensors"))
    return codec.eval()
