"""Recipe: DPO post-training of an audio LM on preference pairs (aurora.data.pairs).

The policy starts from an LM (``model.init_from``: an export, or a trusted run). A pair's log-prob under a model is the
sum, over codebooks and frames, of the log-probs of its valid target codes after the delay
pattern (padding, the pattern's empty slots and the caption prefix are not targets); chosen
and rejected go through the policy in one concatenated forward. The reference is either read
from the shards (``dpo.reference=precomputed``, written by ``data_prep.ref_logprobs``) or a
frozen copy of the initial policy run beside it (``live``), sharded like the policy.
"""

import hashlib
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import nn

from aurora.config import ConfigError
from aurora.data.manifest import resolve_shards
from aurora.exported import TRUST_FIELD, TRUST_FLAG, is_exported, load_weights, read_config
from aurora.generation import LM
from aurora.losses.dpo import DPOLossType, SequenceLogps, preference_loss, preference_metrics, sequence_logps
from aurora.models.audio_lm import AudioLM, AudioLMConfig, delayed_targets, mask_padding
from aurora.perf.flops import audio_lm_train_flops
from aurora.runs import load_model_weights, weights_id
from aurora.tasks.base import MAIN_PART, MODEL_FLOPS, FrozenPartSpec, PartModels
from aurora.tasks.lm import LMModelConfig, LMTask, LMTrainConfig


def completion_logps(model: nn.Module, text_tokens: torch.Tensor, codes: torch.Tensor,
                     lengths: torch.Tensor) -> SequenceLogps:
    """Summed log-probs of codes [B, n_q, T] (frames >= lengths [B] are padding) after
    text_tokens [B, L] under ``model`` (an AudioLM, or its engine's wrapper: it is called, so
    engine hooks run)."""
    special = model_config(model).codebook_size
    codes = mask_padding(codes, lengths, special)
    return sequence_logps(model(text_tokens, codes), delayed_targets(codes, lengths, special))


def model_config(model: nn.Module) -> AudioLMConfig:
    """The AudioLM config of a model or of the module inside its engine's wrapper."""
    inner = getattr(model, "module", model)  # DDP and DeepSpeed keep the module under .module
    return inner.config


def lm_id(config: AudioLMConfig, model: nn.Module) -> str:
    """The id of an LM as a reference: a hash of its shape (every AudioLMConfig field but the
    training-only ones) and of its weights (``aurora.runs.weights_id``)."""
    digest = hashlib.sha256(repr(sorted(_shape(config).items())).encode())
    digest.update(weights_id(model).encode())
    return f"lm:{digest.hexdigest()[:24]}"


def pair_preference(policy: nn.Module, reference: nn.Module | None, text_tokens: torch.Tensor, codes: torch.Tensor,
                    lengths: torch.Tensor, ref_logps: torch.Tensor | None, cfg: "DPOConfig"):
    """The preference loss of B pairs (text_tokens [B, L]; codes [2B, n_q, T] and lengths [2B]:
    the chosen sides, then the rejected): both sides through ``policy`` in one forward; the
    reference's log-probs [2B] from ``reference`` (without gradients) or given (``ref_logps``).
    Returns (PreferenceLoss, chosen, rejected SequenceLogps)."""
    pairs = text_tokens.shape[0]
    text = text_tokens.repeat(2, 1)
    logps = completion_logps(policy, text, codes, lengths)
    if reference is not None:
        with torch.no_grad():
            ref_logps = completion_logps(reference, text, codes, lengths).logps
    chosen = SequenceLogps(logps.logps[:pairs], logps.tokens[:pairs])
    rejected = SequenceLogps(logps.logps[pairs:], logps.tokens[pairs:])
    result = preference_loss(chosen, rejected, ref_logps[:pairs], ref_logps[pairs:], cfg.beta, cfg.loss,
                             cfg.label_smoothing, cfg.rpo_alpha)
    return result, chosen, rejected


class DPOReference(str, Enum):
    precomputed = "precomputed"
    live = "live"


@dataclass
class DPOConfig:
    """The preference loss (TRL's definitions: aurora.losses.dpo) and where the reference comes from."""

    loss: DPOLossType = DPOLossType.sigmoid
    """sigmoid (DPO), ipo, hinge (SLiC) or robust (label-smoothed DPO)."""
    beta: float = 0.1
    """Strength of the pull towards the reference (IPO's tau)."""
    label_smoothing: float = 0.0
    """robust: the assumed fraction of flipped preference labels, in [0, 0.5)."""
    rpo_alpha: float = 0.0
    """> 0 adds alpha times the policy's per-token NLL of the chosen side (RPO)."""
    reference: DPOReference = DPOReference.precomputed
    """precomputed: the reference log-probs the pair shards hold (``data_prep.ref_logprobs``),
    which must come from the policy's starting weights; live: a frozen copy of those weights,
    sharded like the policy, run on every batch."""


@dataclass
class DPOModelConfig(LMModelConfig):
    init_from: str = MISSING
    """The LM the policy (and the live reference) starts from: an exported LM
    (``aurora.generation.export_lm``) or, with ``run.trust_checkpoint=true``, a training run (its
    latest checkpoint) or one of its checkpoints. Its model must have this shape."""
    caption_dropout: float = 0.0
    """Must stay 0: the reference's log-probs are of the full captions."""


@dataclass
class DPOTrainConfig(LMTrainConfig):
    task: str = "dpo"
    model: DPOModelConfig = field(default_factory=DPOModelConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)


REFERENCE = "reference"
"""The live reference's name among the parts."""


TRAINING_ONLY = ("caption_dropout", "long_text")
"""AudioLMConfig fields that say how a model trains, not what it is."""


def _shape(config: AudioLMConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(AudioLMConfig) if f.name not in TRAINING_ONLY}


class DPOTask(LMTask):
    config_class = DPOTrainConfig
    data_kind = "pairs"

    def __init__(self, cfg: DPOTrainConfig, env):
        super().__init__(cfg, env)
        if cfg.model.caption_dropout != 0:
            raise ConfigError(f"config: model.caption_dropout={cfg.model.caption_dropout}, but DPO compares log-probs "
                              f"of the full captions with the reference's: set model.caption_dropout=0")
        self.init_from = Path(cfg.model.init_from)
        start = read_config(self.init_from, LM, **self._trust())
        differ = [name for name, value in _shape(cfg.model).items() if _shape(start)[name] != value]
        if differ:
            detail = ", ".join(f"model.{n}={getattr(cfg.model, n)!r} but {getattr(start, n)!r}" for n in differ)
            raise ConfigError(f"config: the policy's shape differs from model.init_from={self.init_from}'s ({detail}): "
                              f"set the model section to the shape of the run it starts from")
        self.live = cfg.dpo.reference == DPOReference.live
        if not self.live:
            for name in ("shards", "eval_shards"):
                if getattr(cfg.data, name) is not None:
                    self._check_precomputed(getattr(cfg.data, name), name)

    def _pretrained(self) -> None:
        return None  # model.init_from is the policy's start and reference, read in build_model

    def _trust(self) -> dict:
        return {"trust": self.cfg.run.trust_checkpoint, "what": "model.init_from", "how_to_trust": TRUST_FIELD}

    def _lm_argument(self) -> str:
        """``model.init_from`` as ``data_prep.ref_logprobs`` takes it (a run needs the trust flag there too)."""
        return f"--lm {self.init_from}" + ("" if is_exported(self.init_from) else f" {TRUST_FLAG}")

    def _check_precomputed(self, shards: str, name: str) -> None:
        _, manifest = resolve_shards(shards)
        if manifest is None or not (manifest.get("reference") or {}).get("id"):
            raise ConfigError(
                f"config: dpo.reference=precomputed, but data.{name}={shards} holds no reference log-probs: run "
                f"`torchrun --nproc-per-node N -m data_prep.ref_logprobs {self._lm_argument()} --pairs {shards}` "
                f"first, or set dpo.reference=live")

    def build_model(self) -> nn.Module:
        model = AudioLM(self.cfg.model)
        load_weights(model, self.init_from, **self._trust())
        if not self.live:
            ident = lm_id(self.cfg.model, model)
            for name in ("shards", "eval_shards"):
                shards = getattr(self.cfg.data, name)
                if shards is None:
                    continue
                saved = resolve_shards(shards)[1]["reference"]
                if saved["id"] != ident:
                    raise ConfigError(
                        f"config: data.{name}={shards} holds the log-probs of reference {saved['id']} (from "
                        f"{saved.get('run', '?')}), but the policy starts from model.init_from={self.init_from}, "
                        f"whose id is {ident}: run data_prep.ref_logprobs {self._lm_argument()} on the pairs, "
                        f"or start from the reference's run")
        return model

    def frozen_parts(self, model: nn.Module) -> list[FrozenPartSpec]:
        if not self.live:
            return []
        reference = AudioLM(self.cfg.model)
        return [FrozenPartSpec(REFERENCE, reference, reference.shard_units(), updated=False, source=self.init_from)]

    def loss_units(self, batch: dict) -> float:
        return float(len(batch["keys"]))

    def part_loss(self, part: str, models: PartModels, batch: dict, carry: dict, step: int):
        if not self.live:
            return self.loss(models[MAIN_PART], batch)
        result, chosen, rejected = self._preference(models[MAIN_PART], models[REFERENCE], batch)
        return result.loss.mean(), preference_metrics(result, chosen, rejected)

    def loss(self, model: nn.Module, batch: dict):
        """The preference loss of ``model`` against the reference log-probs the batch holds
        (precomputed); ``part_loss`` runs the live reference where there is one."""
        result, chosen, rejected = self._preference(model, None, batch)
        return result.loss.mean(), preference_metrics(result, chosen, rejected)

    def _preference(self, policy: nn.Module, reference: nn.Module | None, batch: dict):
        text = self._text(batch, training=policy.training)  # caption dropout is refused at start
        return pair_preference(policy, reference, text, batch["codes"], batch["lengths"], batch.get("ref_logps"),
                               self.cfg.dpo)

    def batch_items(self, batch: dict) -> dict[str, float]:
        sequences, padded_frames = len(batch["lengths"]), batch["codes"].shape[-1]
        flops = audio_lm_train_flops(self.cfg.model, padded_frames)
        if self.live:  # the reference's forward: a third of a training step's FLOPs
            flops += flops // 3
        return {"samples": float(len(batch["keys"])), "frames": float(batch["lengths"].sum()),
                MODEL_FLOPS: float(sequences * flops)}

    def evaluate(self, checkpoint: Path) -> dict:
        """The preference loss and metrics of the weights in ``checkpoint`` over the held-out pairs
        (``eval_batches``), means over pairs; on rank 0 alone, on plain copies of the models."""
        policy = AudioLM(self.cfg.model)
        load_model_weights(policy, checkpoint)
        policy.to(self.env.device).eval()
        reference = None
        if self.live:
            reference = AudioLM(self.cfg.model)
            load_weights(reference, self.init_from, **self._trust())
            reference.to(self.env.device).eval()
        sums: dict[str, float] = {}
        pairs = 0
        with torch.no_grad():
            for batch in self.eval_batches():
                result, chosen, rejected = self._preference(policy, reference, batch)
                n = len(batch["keys"])
                values = {"loss": result.loss.mean(), **preference_metrics(result, chosen, rejected)}
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * n
                pairs += n
        return {f"eval/{name}": total / pairs for name, total in sums.items()}
