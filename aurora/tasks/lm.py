"""Recipe: a Qwen2-style audio LM on codec token shards, conditioned on the caption.

The codes of each clip are laid out in MusicGen's delay pattern after a byte-level caption
prefix; the loss is the masked cross-entropy averaged over codebooks. At the end of training
rank 0 samples a few clips and decodes them with the codec that made the tokens.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from torch import nn

from aurora.config import ConfigError
from aurora.config.schema import TrainConfig
from aurora.data.manifest import resolve_shards
from aurora.models.audio_lm import AudioLM, AudioLMConfig, delayed_cross_entropy, encode_text, mask_padding
from aurora.perf.flops import audio_lm_train_flops
from aurora.tasks.base import MODEL_FLOPS, Task
from aurora.tasks.codec.load import load_codec
from aurora.runs import load_model_weights


@dataclass
class GenerationConfig:
    num_samples: int = 4
    """Clips written to RUN/samples at the end of training (0 disables sampling)."""
    prompts: list[str] = field(default_factory=list)
    """Captions to sample from; empty: the captions of the first training batch."""
    seconds: float = 2.0
    """Length of each generated clip."""
    temperature: float = 1.0
    """Softmax temperature of sampling."""
    top_k: int = 50
    """Sample among the k most likely codes (0: all, 1: greedy)."""


@dataclass
class LMTrainConfig(TrainConfig):
    task: str = "lm"
    model: AudioLMConfig = field(default_factory=AudioLMConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


class LMTask(Task):
    config_class = LMTrainConfig
    data_kind = "tokens"

    def __init__(self, cfg: LMTrainConfig, env):
        super().__init__(cfg, env)
        _, self.manifest = resolve_shards(cfg.data.shards)
        if self.manifest is not None:
            for key in ("n_q", "codebook_size"):
                if self.manifest.get(key) != getattr(cfg.model, key):
                    raise ConfigError(
                        f"config: model.{key}={getattr(cfg.model, key)} but the token shards in "
                        f"{cfg.data.shards} have {key}={self.manifest.get(key)}: set model.{key} to match"
                    )

    def build_model(self) -> nn.Module:
        return AudioLM(self.cfg.model)

    def shard_units(self, model: AudioLM) -> list[nn.Module]:
        return model.shard_units()

    def _text(self, batch: dict) -> torch.Tensor:
        return encode_text(batch["text"], self.cfg.model.max_text_len).to(self.env.device)

    def loss(self, model: nn.Module, batch: dict):
        special = self.cfg.model.codebook_size
        codes = mask_padding(batch["codes"], batch["lengths"], special)
        logits = model(self._text(batch), codes)
        return delayed_cross_entropy(logits, codes, batch["lengths"], special)

    def batch_items(self, batch: dict) -> dict[str, float]:
        samples, padded_frames = len(batch["keys"]), batch["codes"].shape[-1]
        return {"samples": float(samples), "frames": float(batch["lengths"].sum()),
                MODEL_FLOPS: float(samples * audio_lm_train_flops(self.cfg.model, padded_frames))}

    def on_train_end(self, run_dir: Path) -> None:
        gen = self.cfg.generation
        if gen.num_samples == 0 or self.manifest is None or not self.manifest.get("codec"):
            return
        from aurora.data import build_loader

        prompts = list(gen.prompts)
        if not prompts:
            loader = build_loader(self.cfg.data, "tokens", rank=0, world_size=1, seed=self.cfg.run.seed)
            prompts = next(iter(loader))["text"]
        prompts = (prompts * gen.num_samples)[: gen.num_samples]

        device = self.env.device  # the run's GPU, where it has one
        lm = AudioLM(self.cfg.model)
        load_model_weights(lm, run_dir)
        lm.to(device).eval()
        codec = load_codec(Path(self.cfg.data.shards) / self.manifest["codec"]).codec.to(device)
        frames = max(1, round(gen.seconds * self.manifest["frame_rate"]))
        generator = torch.Generator(device=device).manual_seed(self.cfg.run.seed)
        with torch.no_grad():
            codes = lm.generate(encode_text(prompts, self.cfg.model.max_text_len).to(device), frames,
                                gen.temperature, gen.top_k, generator)
            audio = codec.decode(codes).cpu()
        out_dir = Path(run_dir) / "samples"
        out_dir.mkdir(exist_ok=True)
        with open(out_dir / "samples.jsonl", "w") as index:
            for i, prompt in enumerate(prompts):
                name = f"sample_{i:02d}.flac"
                sf.write(out_dir / name, audio[i, 0].clamp(-1, 1).numpy(), codec.cfg.sample_rate)
                index.write(json.dumps({"file": name, "prompt": prompt, "frames": frames}) + "\n")
