"""A diffusion transformer (DiT) over codec latents, built from the LM's Qwen2 pieces.

    caption bytes ─► embed_tokens ─┐
                                   ├─► [caption ; latent frames] ─► N × DiTBlock ─► adaLN ─► latent head
    latents [B, C, T] ─► latent_in ┘        ▲
    timestep t ─► sinusoid ─► MLP ─► c ─────┘ (every block's shift/scale/gate, adaLN-zero)
    guidance w ─► sinusoid ─► MLP (zero last layer) ─► + c        (students only)

Each block is a Qwen2 block (RMSNorm, split-halves RoPE, GQA attention through SDPA, SwiGLU)
whose two sub-layers are modulated by the conditioning vector ``c`` as in DiT's adaLN-zero: the
normalised input is scaled and shifted, the sub-layer's output gated, all three from a linear map
of ``c`` that starts at zero, so every block starts as the identity.

The caption conditions as a prefix, not through cross-attention: its byte tokens (the LM's
``encode_text``) go in front of the latent frames, and attention is bidirectional over both (with
padding masked). A prefix keeps one block type, the LM's, with no second set of key/value
projections or a second attention per block; a caption of at most a few hundred bytes adds little
to sequences of hundreds of frames; and every block can read the caption and the audio together
(MMDiT/SD3's joint attention makes the same choice). The unconditional model for guidance is the
empty caption (BOS SEP).

A student (``guidance_embedding=true``) also embeds the guidance scale w it was distilled at,
sinusoidally as diffusers' LCM does (w × 1000), through an MLP whose last layer is zero: a
student built on a teacher's weights computes exactly the teacher's function until it trains.
"""

from dataclasses import dataclass, field

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from aurora.models.audio_lm import PAD_ID, TEXT_VOCAB_SIZE
from aurora.models.transformer import Qwen2DecoderLayer, RMSNorm, TransformerConfig, init_weights_, rope_cos_sin


@dataclass
class DiTConfig:
    """Shape of a DiT. Defaults: a tiny CPU model."""

    latent_dim: int = 16
    """Channels of the latents it denoises: the codec's latent_dim (the latent shards' manifest)."""
    max_text_len: int = 64
    """Caption tokens (BOS + UTF-8 bytes + SEP) in front of the latents."""
    frequency_dim: int = 64
    """Width of the sinusoidal embeddings of the timestep and of the guidance scale."""
    guidance_embedding: bool = False
    """Embed a guidance scale w beside the timestep (an LCM student); a teacher has none."""
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    """The Qwen2 blocks' shape; its vocab_size must cover the 259 text tokens (tie_word_embeddings
    is not used)."""

    def __post_init__(self):
        if self.backbone.vocab_size < TEXT_VOCAB_SIZE:
            raise ValueError(f"backbone.vocab_size={self.backbone.vocab_size} is smaller than the {TEXT_VOCAB_SIZE} "
                             f"text tokens (256 bytes + PAD, BOS, SEP)")
        if self.frequency_dim % 2:
            raise ValueError(f"frequency_dim={self.frequency_dim} must be even (sines and cosines)")


GUIDANCE_KEYS = "guidance_embed."
"""The parameters a student has and its teacher has not (their names start so)."""


def _conditioning_mlp(frequency_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, S, H] scaled by 1 + scale and shifted by shift, both [B, H] (DiT's adaLN)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(Qwen2DecoderLayer):
    """A Qwen2 block modulated by the conditioning vector (adaLN-zero): the unit FSDP shards."""

    def __init__(self, config: TransformerConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden_size, 6 * config.hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],  # type: ignore[override]
                mask: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        h = self.self_attn(modulate(self.input_layernorm(x), shift1, scale1), rope, attn_mask=mask)
        x = x + gate1[:, None] * h
        h = self.mlp(modulate(self.post_attention_layernorm(x), shift2, scale2))
        return x + gate2[:, None] * h


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        b = config.backbone
        self.embed_tokens = nn.Embedding(b.vocab_size, b.hidden_size)
        self.latent_in = nn.Linear(config.latent_dim, b.hidden_size)
        self.time_embed = _conditioning_mlp(config.frequency_dim, b.hidden_size)
        if config.guidance_embedding:
            self.guidance_embed = _conditioning_mlp(config.frequency_dim, b.hidden_size)
        self.layers = nn.ModuleList(DiTBlock(b, i) for i in range(b.num_hidden_layers))
        self.norm = RMSNorm(b.hidden_size, b.rms_norm_eps)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(b.hidden_size, 2 * b.hidden_size))
        self.latent_out = nn.Linear(b.hidden_size, config.latent_dim)
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        """Qwen2's normal init, then adaLN-zero: every modulation, the latent head and the
        guidance MLP's last layer start at zero."""
        init_weights_(self, std)
        zeroed = [block.modulation[1] for block in self.layers] + [self.final_modulation[1], self.latent_out]
        if self.config.guidance_embedding:
            zeroed.append(self.guidance_embed[2])
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def shard_units(self) -> list[nn.Module]:
        """The modules an FSDP engine wraps one by one: the blocks."""
        return list(self.layers)

    def conditioning(self, timesteps: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
        """c [B, hidden] of timesteps [B] (0..999) and, for a student, guidance scales w [B]."""
        dim = self.config.frequency_dim
        c = self.time_embed(get_timestep_embedding(timesteps, dim, flip_sin_to_cos=True, downscale_freq_shift=0))
        if self.config.guidance_embedding:
            if guidance is None:
                raise ValueError("this DiT is a student: give the guidance scale w it samples at")
            # diffusers' LCM guidance_scale_embedding: sin then cos of w * 1000
            c = c + self.guidance_embed(get_timestep_embedding(guidance * 1000.0, dim, downscale_freq_shift=1))
        elif guidance is not None:
            raise ValueError("this DiT has no guidance embedding (a teacher): guide it by classifier-free guidance")
        return c

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text_tokens: torch.Tensor,
                lengths: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The model output [B, C, T] (noise or velocity, as trained) for noisy latents [B, C, T]
        at timesteps [B], captions text_tokens [B, L] (``encode_text``); frames >= lengths [B] are
        padding, which no position attends to."""
        batch, _, frames = latents.shape
        x = torch.cat([self.embed_tokens(text_tokens), self.latent_in(latents.transpose(1, 2))], dim=1)
        valid = torch.ones(batch, frames, dtype=torch.bool, device=latents.device)
        if lengths is not None:
            valid = torch.arange(frames, device=latents.device)[None] < lengths[:, None]
        keys = torch.cat([text_tokens != PAD_ID, valid], dim=1)
        mask = keys[:, None, None, :]
        positions = torch.arange(x.shape[1], device=x.device)[None]
        rope = rope_cos_sin(positions, self.config.backbone.head_dim, self.config.backbone.rope_theta, x.dtype)
        c = self.conditioning(timesteps, guidance).to(x.dtype)
        for layer in self.layers:
            x = layer(x, c, rope, mask)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        out = self.latent_out(modulate(self.norm(x[:, text_tokens.shape[1]:]), shift, scale))
        return out.transpose(1, 2)
