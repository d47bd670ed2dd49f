"""Recipe: a Qwen2-style audio LM on codec token shards, conditioned on the caption.

The codes of each clip are laid out in MusicGen's delay pattern after a byte-level caption
prefix; the loss is the masked cross-entropy averaged over codebooks. At the end of training
every rank samples its share of a few clips and decodes them with the codec that made the tokens.
"""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from aurora.config import ConfigError
from aurora.config.schema import TrainConfig
from aurora.data.manifest import resolve_shards
from aurora.generation import LM, SamplingSettings
from aurora.data.config import DataError
from aurora.models.audio_lm import (AudioLM, AudioLMConfig, LongText, delayed_cross_entropy, encode_text, mask_padding,
                                    text_overflow)
from aurora.perf.flops import audio_lm_train_flops
from aurora.release.pretrained import HF, InitFrom, check_backbone_shape, init_model_from, parse_init_from
from aurora.tasks.base import MODEL_FLOPS, Task

SAMPLES_DIR = "samples"
TRUNCATED_TEXT = "data/truncated_text"
_LONG_TEXT_FIXES = ("raise model.max_text_len (a model trained on other lengths then needs fine-tuning), or set "
                    "model.long_text=truncate to cut such text and count it (data/truncated_text)")


@dataclass
class GenerationConfig(SamplingSettings):
    """The end-of-training samples: how many, of what, and ``aurora generate``'s settings."""

    num_samples: int = 4
    """Clips written to RUN/samples at the end of training (0 disables sampling)."""
    prompts: list[str] = field(default_factory=list)
    """Captions to sample from; empty: the captions of the first training batch."""
    batch_size: int = 4
    """Prompts sampled together; rank r of W samples batches r, r + W, ... of them."""


@dataclass
class LMModelConfig(AudioLMConfig):
    init_from: Optional[str] = None
    """Pretrained weights the model starts from (``aurora.release.pretrained``): ``hf:DIR``, a
    local transformers Qwen2 folder, into the backbone (its config.json must match
    ``backbone``; the codebook embeddings and heads start fresh), or ``run:RUN[@STEP]``, another
    run's checkpoint (needs ``run.trust_checkpoint=true``). null: the seed's initialisation.
    A resumed run reads its own checkpoint instead."""


@dataclass
class LMTrainConfig(TrainConfig):
    task: str = "lm"
    model: LMModelConfig = field(default_factory=LMModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


class LMTask(Task):
    config_class = LMTrainConfig
    data_kind = "tokens"
    model_kind = LM

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

        self.pretrained = self._pretrained()
        if self.pretrained is not None and self.pretrained.kind == HF:
            check_backbone_shape(cfg.model.backbone, self.pretrained.path)
        self.steps_done = 0
        """Optimizer steps taken: with the seed and a clip's key, it decides the clip's caption dropout."""
        self.truncated_texts = 0
        """Captions this rank cut to ``model.max_text_len`` (``long_text=truncate``)."""
        self._check_longest_text()

    def _check_longest_text(self) -> None:
        """Refuse (``long_text=refuse``) shards whose manifest records text longer than the model reads."""
        model = self.cfg.model
        if model.long_text != LongText.refuse:
            return
        eval_spec = self.cfg.data.eval_shards
        manifests = {"shards": self.manifest, "eval_shards": resolve_shards(eval_spec)[1] if eval_spec else None}
        for name, manifest in manifests.items():
            spec = getattr(self.cfg.data, name)
            longest = (manifest or {}).get("text_bytes_max")
            if isinstance(longest, int) and longest > model.max_text_len - 2:
                raise ConfigError(f"config: data.{name}={spec} holds captions of up to {longest} bytes (its manifest's "
                                  f"text_bytes_max), but model.max_text_len={model.max_text_len} reads at most "
                                  f"{model.max_text_len - 2}: {_LONG_TEXT_FIXES}")

    def _pretrained(self) -> Optional[InitFrom]:
        """What ``model.init_from`` names (a recipe that reads it its own way returns None)."""
        return None if self.cfg.model.init_from is None else parse_init_from(self.cfg.model.init_from)

    def build_model(self) -> nn.Module:
        model = AudioLM(self.cfg.model)
        if self.pretrained is not None:
            init_model_from(model, self.pretrained, trust=self.cfg.run.trust_checkpoint, backbone=model.backbone)
        return model

    def shard_units(self, model: AudioLM) -> list[nn.Module]:
        return model.shard_units()

    def _text(self, batch: dict, training: bool) -> torch.Tensor:
        """The batch's captions as text tokens: long ones refused or cut (``model.long_text``,
        counted in training) and, in training, some dropped (``model.caption_dropout``)."""
        texts = batch["text"]
        self._check_text_lengths(batch, count=training)
        if training and self.cfg.model.caption_dropout > 0:
            texts = ["" if self._drops_caption(key) else text for key, text in zip(batch["keys"], texts)]
        return encode_text(texts, self.cfg.model.max_text_len).to(self.env.device)

    def _check_text_lengths(self, batch: dict, count: bool) -> None:
        model = self.cfg.model
        long = text_overflow(batch["text"], model.max_text_len)
        if not long:
            return
        if model.long_text == LongText.truncate:
            self.truncated_texts += len(long) if count else 0
            return
        first = long[0]
        raise DataError(f"sample {batch['keys'][first]} has a caption of {len(batch['text'][first].encode('utf-8'))} "
                        f"bytes; model.max_text_len={model.max_text_len} reads at most {model.max_text_len - 2}: "
                        f"{_LONG_TEXT_FIXES}")

    def counters(self) -> dict[str, float]:
        return {TRUNCATED_TEXT: float(self.truncated_texts)}

    def _drops_caption(self, key: str) -> bool:
        # A hash of (seed, step, key), not a random stream: whichever rank, batch or worker a
        # clip lands in, it is dropped in the same steps, so any launch trains the same numbers.
        digest = hashlib.blake2b(f"{self.cfg.run.seed}/{self.steps_done}/{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.cfg.model.caption_dropout

    def after_step(self, models, step: int) -> dict[str, float]:
        self.steps_done = step
        return {}

    def loss(self, model: nn.Module, batch: dict):
        special = self.cfg.model.codebook_size
        codes = mask_padding(batch["codes"], batch["lengths"], special)
        logits = model(self._text(batch, model.training), codes)
        return delayed_cross_entropy(logits, codes, batch["lengths"], special)

    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done, "truncated_texts": self.truncated_texts}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint written before caption dropout holds no count: its resumed run draws as
        # at step 0 until its first step sets the count. One written before long_text counted none.
        self.steps_done = state.get("steps_done", 0)
        self.truncated_texts = state.get("truncated_texts", 0)

    def batch_items(self, batch: dict) -> dict[str, float]:
        samples, padded_frames = len(batch["keys"]), batch["codes"].shape[-1]
        return {"samples": float(samples), "frames": float(batch["lengths"].sum()),
                MODEL_FLOPS: float(samples * audio_lm_train_flops(self.cfg.model, padded_frames))}

    def on_train_end(self, run_dir: Path) -> None:
        """This rank's share of the end-of-training samples, as ``aurora generate`` samples them
        (each rank loads the final checkpoint whole)."""
        gen = self.cfg.generation
        if gen.num_samples == 0 or self.manifest is None or not self.manifest.get("codec"):
            return
        from aurora.data import build_loader
        from aurora.generation import LMSampler, write_rank_records, write_samples

        prompts = list(gen.prompts)
        if not prompts:  # the same on every rank: the first batch of a 1-reader stream
            loader = build_loader(self.cfg.data, self.data_kind, rank=0, world_size=1, seed=self.cfg.run.seed)
            prompts = next(iter(loader))["text"]
        prompts = (prompts * gen.num_samples)[: gen.num_samples]
        sampler = LMSampler(run_dir, self.env.device, trust=True)  # the job's own run.dir; its GPU, where it has one
        out_dir = Path(run_dir) / SAMPLES_DIR
        records = write_samples(sampler, prompts, self.cfg.run.seed, gen, out_dir, gen.batch_size, self.env.rank,
                                self.env.world_size)
        write_rank_records(out_dir, records, self.env.rank, self.env.world_size)

    def after_train_end(self, run_dir: Path) -> None:
        from aurora.generation import write_index

        out_dir = Path(run_dir) / SAMPLES_DIR
        if out_dir.is_dir():
            write_index(out_dir, self.env.world_size)
