"""A model's size, training FLOPs and activation memory, from a training config.

Parameter counts come from the model built on the meta device (no memory, no init cost), split
as the engines shard it: the task's shard units (transformer layers, codec stages) and the
root (everything else: embeddings, heads, norms, stems).

FLOPs: the LM's from aurora.perf.flops' formula; the codec's counted by
aurora.perf.flops.codec_train_flops (FlopCounterMode) on a real 1-second forward + backward
on the CPU, scaled linearly to the example length (the codec is convolutional).

Activation memory per example:

- LM, per layer and token, with a bytes per activation (2 in bf16, 4 in fp32), hidden h,
  MLP width I, H heads of size d, kv_heads: 8h (fp32 copies that the two RMSNorms keep) +
  6ah (norm outputs and their weight inputs, q, attention output) + 2a*kv_heads*d (k, v) +
  4aI (gate, up, silu(gate), their product) + 4H (attention logsumexp) + 8 (the norms'
  rsqrt). This is what autograd saves for this block with a FlashAttention-style kernel
  (O(S) memory), counted tensor by tensor (tests/unit/tools/test_scale_model.py checks it against a real
  forward); the final norm adds 4h + 2ah per token, and the loss keeps the fp32 log-softmax
  of the n_q heads and its gradient, 8 n_q codebook_size bytes per audio position.
  With activation checkpointing each layer keeps only its input (a h per token) and one
  layer's activations are live again during its recomputation.
- Codec: the bytes autograd saves per second of audio in that CPU forward (fp32; see
  `codec_second`), scaled to the example length and by a/4; measured without activation
  checkpointing, so an overestimate when the config turns it on.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from aurora.config import ConfigError, load_config, peek_task
from aurora.config.schema import EngineConfig, Precision
from aurora.models.audio_lm import AudioLM, AudioLMConfig
from aurora.models.codec import Codec
from aurora.perf.flops import audio_lm_seq_len, audio_lm_train_flops, codec_train_flops
from aurora.models.transformer import TransformerConfig
from aurora.tasks import get_task


@dataclass(frozen=True)
class ModelProfile:
    config: str
    """The config file it was read from."""
    task: str
    """lm or codec."""
    params: int
    root_params: int
    """Parameters outside the shard units."""
    max_unit_params: int
    """Parameters of the largest shard unit."""
    units: int
    """Number of shard units (FSDP wraps each, plus the root)."""
    frames: int
    """Frames per example: the LM's audio frames in context, or the codec's latent frames per clip."""
    flops_per_example: float
    """Forward + backward FLOPs of one example."""
    activation_bytes: float
    """Activation memory of one example (at the config's precision and activation checkpointing)."""
    micro_batch: int
    """Examples per GPU per micro-batch (data.batch_size)."""
    grad_accum: int
    """Micro-batches per optimizer step (trainer.grad_accum_steps)."""
    engine: EngineConfig
    """The config's engine section: precision, bucket sizes, activation checkpointing."""

    @property
    def compute_bytes(self) -> int:
        """Bytes per activation and per gathered parameter: 2 in bf16, 4 in fp32."""
        return 2 if self.engine.precision == Precision.bf16 else 4


def load_profile(path: str, overrides: list[str] = (), frames: int | None = None) -> ModelProfile:
    """The profile of the model a training config describes; `overrides` as on the training
    command line (key=value), `frames` replaces the config's example length."""
    task = peek_task(path)
    cfg = load_config(get_task(task).config_class, path, list(overrides))
    if task == "lm":
        return _lm_profile(path, cfg, frames)
    if task == "codec":
        return _codec_profile(path, cfg, frames)
    raise ConfigError(f"config: {path} is a '{task}' config; the scale model knows 'lm' and 'codec' configs")


def _sizes(model: nn.Module, units: list[nn.Module]) -> dict:
    unit_params = [sum(p.numel() for p in u.parameters()) for u in units]
    total = sum(p.numel() for p in model.parameters())
    return {"params": total, "root_params": total - sum(unit_params), "max_unit_params": max(unit_params),
            "units": len(units)}


def _common(path: str, task: str, cfg) -> dict:
    return {"config": str(path), "task": task, "micro_batch": cfg.data.batch_size,
            "grad_accum": cfg.trainer.grad_accum_steps, "engine": cfg.engine}


def layer_activation_bytes_per_token(b: TransformerConfig, act_bytes: int) -> int:
    """Bytes autograd saves per token in one Qwen2 decoder layer (see the module docstring)."""
    h, a = b.hidden_size, act_bytes
    return (8 * h + 6 * a * h + 2 * a * b.num_key_value_heads * b.head_dim + 4 * a * b.intermediate_size
            + 4 * b.num_attention_heads + 8)


def lm_activation_bytes(cfg: AudioLMConfig, frames: int, act_bytes: int, checkpointing: bool) -> float:
    """Activation bytes of one AudioLM example (see the module docstring)."""
    b, a = cfg.backbone, act_bytes
    seq = audio_lm_seq_len(cfg, frames)
    per_layer = layer_activation_bytes_per_token(b, a)
    if checkpointing:
        layers = (b.num_hidden_layers * a * b.hidden_size + per_layer) * seq
    else:
        layers = b.num_hidden_layers * per_layer * seq
    final_norm = (4 * b.hidden_size + 2 * a * b.hidden_size) * seq
    loss = 8 * cfg.n_q * cfg.codebook_size * (frames + cfg.n_q - 1)
    return layers + final_norm + loss


def _lm_profile(path: str, cfg, frames: int | None) -> ModelProfile:
    with torch.device("meta"):
        model = AudioLM(cfg.model)
    frames = frames or cfg.data.context_frames
    a = 2 if cfg.engine.precision == Precision.bf16 else 4
    return ModelProfile(**_common(path, "lm", cfg), **_sizes(model, model.shard_units()), frames=frames,
                        flops_per_example=audio_lm_train_flops(cfg.model, frames),
                        activation_bytes=lm_activation_bytes(cfg.model, frames, a, cfg.engine.activation_checkpointing))


def _saved_during(model: Codec, seconds: float) -> tuple[int, int]:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        flops = codec_train_flops(model, seconds)
    return flops, sum(saved.values())


def codec_second(model: Codec) -> tuple[int, float]:
    """(FLOPs, activation bytes) per second of audio of a forward + backward of `model`, on the
    CPU in fp32. Activations are the bytes autograd saves that grow with the clip: the
    difference between a 1-second and a half-second run, which leaves out what does not (the
    weight-normalised kernels, recomputed each forward)."""
    flops, one = _saved_during(model, 1.0)
    _, half = _saved_during(model, 0.5)
    return flops, 2 * (one - half)


def _codec_profile(path: str, cfg, frames: int | None) -> ModelProfile:
    m = cfg.model
    frames = frames or math.ceil(cfg.data.segment_seconds * m.frame_rate)
    seconds = frames / m.frame_rate
    with torch.device("meta"):
        model = Codec(m)
    flops, act_fp32 = codec_second(Codec(m))
    a = 2 if cfg.engine.precision == Precision.bf16 else 4
    return ModelProfile(**_common(path, "codec", cfg), **_sizes(model, model.shard_units()), frames=frames,
                        flops_per_example=flops * seconds, activation_bytes=act_fp32 * seconds * a / 4)
