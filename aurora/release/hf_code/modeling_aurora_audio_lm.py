"""An aurora audio LM (written by ``aurora export --format hf``): a stock transformers
``Qwen2Model`` backbone, one embedding per codebook (summed at each position) and one linear
head per codebook, over a byte-level caption prefix and the codes in MusicGen's delay pattern.

    text:   PAD .. PAD BOS c a p t i o n SEP | f0 f1 .. f(S-2)
    target:                              f0  | f1 f2 .. f(S-1)

``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` builds it; ``forward(text_tokens,
codes)`` gives aurora's logits and ``generate_codes(captions, num_frames)`` samples codes to
decode with the codec the config names. The functions between the markers are aurora's own
(``aurora.models.delay_pattern``, ``aurora.models.audio_lm``), copied in at export.
"""

import inspect

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel, Qwen2Model

from .configuration_aurora_audio_lm import AuroraAudioLMConfig

_CACHE = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"
"""The KV cache argument's name in this transformers' Qwen2Model (renamed in 5.x)."""

# <aurora functions>


class AuroraAudioLM(PreTrainedModel):
    config_class = AuroraAudioLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["Qwen2DecoderLayer"]

    def __init__(self, config: AuroraAudioLMConfig):
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.audio_codebook_size + 1, config.hidden_size) for _ in range(config.audio_n_q))
        self.heads = nn.ModuleList(
            nn.Linear(config.hidden_size, config.audio_codebook_size, bias=False) for _ in range(config.audio_n_q))
        self.post_init()

    def embed_codes(self, delayed: torch.Tensor) -> torch.Tensor:
        """delayed frames [B, n_q, S] -> [B, S, hidden], the sum of the codebooks' embeddings."""
        return sum(emb(delayed[:, k]) for k, emb in enumerate(self.code_embeddings))

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, hidden] -> logits [B, n_q, S, codebook_size]."""
        return torch.stack([head(hidden) for head in self.heads], dim=1)

    def forward(self, text_tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """text_tokens [B, L] (``encode_text``), codes [B, n_q, T] -> logits [B, n_q, T + n_q - 1,
        codebook_size] of every position of the delayed codes."""
        delayed = build_delay_pattern(codes, self.config.audio_codebook_size)[..., :-1]
        x = torch.cat([self.model.embed_tokens(text_tokens), self.embed_codes(delayed)], dim=1)
        hidden = self.model(inputs_embeds=x).last_hidden_state
        return self.project(hidden[:, text_tokens.shape[1] - 1:])

    @torch.no_grad()
    def generate_codes(self, captions: list[str], num_frames: int, temperature: float = 1.0, top_k: int = 50,
                       top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes [B, n_q, num_frames] sampled for ``captions``, one delayed frame per step with a
        KV cache (conditional sampling; aurora's ``aurora generate`` adds classifier-free guidance)."""
        special, K = self.config.audio_codebook_size, self.config.audio_n_q
        text = encode_text(captions, self.config.max_text_len).to(self.device)
        B, steps = text.shape[0], num_frames + K - 1
        real = delay_pattern_mask(K, num_frames, text.device)
        delayed = text.new_full((B, K, steps), special)
        cache = DynamicCache(config=self.config)
        x, past = self.model.embed_tokens(text), 0
        for t in range(steps):
            positions = torch.arange(past, past + x.shape[1], device=x.device)[None]
            hidden = self.model(inputs_embeds=x, use_cache=True, position_ids=positions,
                                **{_CACHE: cache}).last_hidden_state
            past += x.shape[1]
            logits = self.project(hidden[:, -1:])[:, :, 0].float()
            frame = sample(logits, temperature, top_k, top_p, None if generator is None else [generator] * B)
            delayed[:, :, t] = frame.masked_fill(~real[:, t], special)
            x = self.embed_codes(delayed[:, :, t:t + 1])
        return revert_delay_pattern(delayed)
