"""The codec recipe's config: the codec, its discriminator, losses, GAN schedule and quantizer
maintenance, on top of the shared TrainConfig."""

import dataclasses
from dataclasses import dataclass, field

from aurora.config.schema import LRSchedule, OptimConfig, TrainConfig
from aurora.losses.gan import GanLossKind
from aurora.models.codec import CodecConfig, DiscriminatorConfig

DISCRIMINATOR = "discriminator"
"""The discriminator's part name: its checkpoint key (``parts/discriminator``) and metric prefix."""


@dataclass
class CodecLossConfig:
    mel_weight: float = 15.0
    """Weight of the multi-scale log-mel L1 (DAC: 15)."""
    waveform_weight: float = 0.0
    """Weight of the waveform L1 (DAC: 0)."""
    adversarial_weight: float = 1.0
    """Weight of the generator's adversarial loss (DAC: 1)."""
    feature_matching_weight: float = 2.0
    """Weight of the discriminator feature-matching L1 (DAC: 2)."""
    commitment_weight: float = 0.25
    """Weight of the commitment loss (encoder towards its codes), summed over stages (DAC: 0.25)."""
    codebook_weight: float = 1.0
    """Weight of the codebook loss (codes towards the encoder), summed over stages (DAC: 1)."""
    adversarial: GanLossKind = GanLossKind.lsgan
    """Adversarial loss: lsgan (least squares, DAC) or hinge (EnCodec)."""
    mel_n_ffts: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    """STFT sizes of the mel scales (hop = n_fft / 4; DAC's window lengths)."""
    mel_n_mels: list[int] = field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    """Mel bands per scale, one per entry of mel_n_ffts (DAC's)."""
    balancer: bool = False
    """Balance the losses of the reconstruction (mel, waveform, adversarial, feature matching) by
    their gradient norms w.r.t. the generated audio (EnCodec): each weight becomes a share of
    ``balancer_total_norm``. The quantizer losses keep their fixed weights."""
    balancer_total_norm: float = 1.0
    """balancer: norm of the summed, rescaled gradient on each generated clip (the step takes
    its mean over the batch's clips, so it does not depend on the batch size or the world size)."""
    balancer_ema_decay: float = 0.999
    """balancer: decay of the moving average of each loss's gradient norm."""


@dataclass
class QuantizerMaintenanceConfig:
    dead_code_every: int = 10
    """Every N optimizer steps, codes that no rank used in those N steps are replaced by
    encoder outputs from the latest batch (0 disables)."""


def _discriminator_optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, betas=[0.8, 0.99], weight_decay=0.0, schedule=LRSchedule.exponential)


@dataclass
class GanConfig:
    enabled: bool = True
    """Train against the discriminator. false: reconstruction losses alone (one optimizer)."""
    start_step: int = 0
    """Steps the generator trains on reconstruction alone before the discriminator (and the
    adversarial and feature-matching losses) start: a warm-up delay."""
    optim: OptimConfig = field(default_factory=_discriminator_optim)
    """The discriminator's optimizer and LR schedule (DAC: AdamW 1e-4, betas (0.8, 0.99),
    ExponentialLR 0.999996 per step)."""
    clip_grad_norm: float | None = 10.0
    """The discriminator's gradient-norm clip (DAC: 10; the generator's is trainer.clip_grad_norm)."""


@dataclass
class CodecTrainConfig(TrainConfig):
    task: str = "codec"
    model: CodecConfig = field(default_factory=CodecConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    """Sub-discriminators (its sample_rate is always model.sample_rate)."""
    loss: CodecLossConfig = field(default_factory=CodecLossConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    quantizer: QuantizerMaintenanceConfig = field(default_factory=QuantizerMaintenanceConfig)
    eval_clips: int = 4
    """Clips of the first eval batch reconstructed at every evaluation (FLAC + log-mel PNG in
    RUN/samples/step_N, and wandb media when enabled)."""

    def __post_init__(self):
        super().__post_init__()
        if self.data.sample_rate != self.model.sample_rate:
            raise ValueError(f"data.sample_rate ({self.data.sample_rate}) must equal model.sample_rate "
                             f"({self.model.sample_rate}): the loader resamples to data.sample_rate")
        self.discriminator = dataclasses.replace(self.discriminator, sample_rate=self.model.sample_rate)
