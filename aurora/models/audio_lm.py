"""A text-conditioned, multi-codebook audio language model on a Qwen2 backbone (MusicGen-style).

One sequence per example: the caption as UTF-8 bytes, left-padded to a fixed length, then the
audio codes in MusicGen's delay pattern, one position per delayed frame whose input is the
sum of one embedding per codebook. n_q linear heads read each position and predict the next
delayed frame; the last text position (SEP) predicts the first one.

    text:   PAD .. PAD BOS c a p t i o n SEP | f0 f1 .. f(S-2)
    target:                              f0  | f1 f2 .. f(S-1)

The caption goes through the backbone's own `embed_tokens` (only its first 259 rows are
used), so the backbone stays a plain Qwen2 that loads and exports pretrained weights as is.
Left padding puts the audio at the same position for every caption. There is no padding mask:
PAD is attended to like any other token, and being the same token everywhere, is learnt away.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from aurora.models.delay_pattern import (
    build_delay_pattern,
    delay_pattern_mask,
    revert_delay_pattern,
)
from aurora.models.transformer import KVCache, Qwen2Model, TransformerConfig, init_weights_

PAD_ID = 256
"""Text token filling the left of short captions."""
BOS_ID = 257
"""Text token opening a caption."""
SEP_ID = 258
"""Text token closing a caption; its position predicts the first audio frame."""
TEXT_VOCAB_SIZE = 259
"""256 byte values + PAD, BOS, SEP: the backbone's vocab_size must be at least this."""


def encode_text(texts: list[str], max_len: int) -> torch.Tensor:
    """LongTensor [B, max_len] of `PAD.. BOS utf-8 bytes SEP`, bytes cut to max_len - 2 on a
    character boundary (callers refuse or count what is cut: ``text_overflow``)."""
    if max_len < 2:
        raise ValueError(f"max_len={max_len} leaves no room for BOS and SEP")
    tokens = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [BOS_ID, *truncate_utf8(text, max_len - 2), SEP_ID]
        tokens[i, max_len - len(ids) :] = torch.tensor(ids)
    return tokens


def truncate_utf8(text: str, limit: int) -> bytes:
    """The UTF-8 bytes of ``text``, cut to at most ``limit`` without splitting a character."""
    data = text.encode("utf-8")
    return data if len(data) <= limit else data[:limit].decode("utf-8", "ignore").encode("utf-8")


def text_overflow(texts: list[str], max_text_len: int) -> list[int]:
    """Indices of the texts longer than an LM with ``max_text_len`` text tokens reads (BOS and
    SEP take two of them)."""
    return [i for i, text in enumerate(texts) if len(text.encode("utf-8")) > max_text_len - 2]


class LongText(str, Enum):
    refuse = "refuse"
    truncate = "truncate"


@dataclass
class AudioLMConfig:
    """Shape of an AudioLM. Defaults: a tiny CPU model on the `tiny` backbone."""

    n_q: int = 4
    """Number of codebooks (residual quantizer levels) modelled in parallel."""
    codebook_size: int = 1024
    """Codes per codebook; the code `codebook_size` itself is the delay pattern's special token."""
    max_text_len: int = 256
    """Text tokens per caption or transcript (BOS + UTF-8 bytes + SEP): 254 bytes hold about
    15 s of read English speech. ``aurora generate`` refuses longer text; training does what
    ``long_text`` says."""
    long_text: LongText = LongText.refuse
    """Training on text longer than ``max_text_len`` allows: ``refuse`` stops before the first
    step when the shard manifest's ``text_bytes_max`` (written by the shard writers) is over
    the limit, or at the first batch holding such text; ``truncate`` cuts it on a character
    boundary and counts it (``data/truncated_text``)."""
    caption_dropout: float = 0.1
    """Training only: the probability that an example's caption is replaced by the empty one,
    which teaches the unconditional model that classifier-free guidance samples against."""
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    """The Qwen2 decoder; its vocab_size must cover the 259 text tokens."""


class AudioLM(nn.Module):
    def __init__(self, config: AudioLMConfig):
        super().__init__()
        if config.backbone.vocab_size < TEXT_VOCAB_SIZE:
            raise ValueError(
                f"backbone.vocab_size={config.backbone.vocab_size} is smaller than the "
                f"{TEXT_VOCAB_SIZE} text tokens (256 bytes + PAD, BOS, SEP) that go through "
                "the backbone's embed_tokens"
            )
        self.config = config
        self.special_token = config.codebook_size
        hidden = config.backbone.hidden_size
        self.backbone = Qwen2Model(config.backbone)
        self.code_embeddings = nn.ModuleList(
            nn.Embedding(config.codebook_size + 1, hidden) for _ in range(config.n_q)
        )
        self.heads = nn.ModuleList(
            nn.Linear(hidden, config.codebook_size, bias=False) for _ in range(config.n_q)
        )
        init_weights_(self.code_embeddings)
        init_weights_(self.heads)

    def init_weights(self, std: float = 0.02) -> None:
        init_weights_(self, std)

    def shard_units(self) -> list[nn.Module]:
        """The modules an FSDP engine wraps one by one: the backbone's decoder layers."""
        return list(self.backbone.layers)

    def embed_codes(self, delayed: torch.Tensor) -> torch.Tensor:
        """delayed frames [B, n_q, S] -> [B, S, hidden], the sum of the codebooks' embeddings."""
        return sum(emb(delayed[:, k]) for k, emb in enumerate(self.code_embeddings))

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, hidden] -> logits [B, n_q, S, codebook_size]."""
        return torch.stack([head(hidden) for head in self.heads], dim=1)

    def forward_delayed(self, text_tokens: torch.Tensor, delayed: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_q, S + 1, codebook_size] of delayed frames 0..S, given the text tokens
        [B, L] and the delayed frames 0..S-1 [B, n_q, S] (S may be 0)."""
        x = torch.cat([self.backbone.embed_tokens(text_tokens), self.embed_codes(delayed)], dim=1)
        hidden = self.backbone(inputs_embeds=x)
        return self.project(hidden[:, text_tokens.shape[1] - 1 :])

    def forward(self, text_tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """text_tokens [B, L], codes [B, n_q, T] -> logits [B, n_q, T + n_q - 1, codebook_size]
        for every position of the delayed codes."""
        delayed = build_delay_pattern(codes, self.special_token)
        return self.forward_delayed(text_tokens, delayed[..., :-1])

    def loss(
        self, text_tokens: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`delayed_cross_entropy` of this model on codes whose frames >= code_lengths [B] are
        padding. A training loop calls the (wrapped) module itself and the two functions below,
        so that engine hooks on forward run; this method is the same computation, unwrapped."""
        codes = mask_padding(codes, code_lengths, self.special_token)
        return delayed_cross_entropy(self(text_tokens, codes), codes, code_lengths, self.special_token)

    @torch.no_grad()
    def generate(
        self,
        text_tokens: torch.Tensor,
        num_frames: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        cfg_scale: float = 1.0,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Sample codes [B, n_q, num_frames] for text_tokens [B, L], one delayed frame per step
        with a KV cache. ``sample`` draws each frame (temperature, top_k, top_p; ``generators``:
        one per row, so a row's codes do not depend on the rows beside it). Positions the delay
        pattern leaves empty get the special token, unsampled.

        Classifier-free guidance: logits = uncond + cfg_scale * (cond - uncond), where uncond is
        the model given the empty caption (what caption dropout trains); both run in one batch.
        cfg_scale=1 is conditional sampling alone, 0 unconditional sampling alone."""
        B, K = text_tokens.shape[0], self.config.n_q
        guided = cfg_scale not in (0.0, 1.0)
        if cfg_scale == 0.0:
            text_tokens = unconditional_text(B, text_tokens.shape[1]).to(text_tokens.device)
        elif guided:
            text_tokens = torch.cat([text_tokens, unconditional_text(B, text_tokens.shape[1]).to(text_tokens.device)])
        steps = num_frames + K - 1
        real = delay_pattern_mask(K, num_frames, text_tokens.device)  # [K, steps]
        delayed = text_tokens.new_full((B, K, steps), self.special_token)
        cache = KVCache(len(self.backbone.layers))
        x = self.backbone.embed_tokens(text_tokens)
        for t in range(steps):
            logits = self.project(self.backbone(inputs_embeds=x, kv_cache=cache)[:, -1:])[:, :, 0].float()
            if guided:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            frame = sample(logits, temperature, top_k, top_p, generators)
            delayed[:, :, t] = frame.masked_fill(~real[:, t], self.special_token)
            step_codes = delayed[:, :, t : t + 1]
            x = self.embed_codes(torch.cat([step_codes, step_codes]) if guided else step_codes)
        return revert_delay_pattern(delayed)


def unconditional_text(batch_size: int, max_len: int) -> torch.Tensor:
    """The empty caption's tokens [batch_size, max_len]: the model's unconditional input."""
    return encode_text([""] * batch_size, max_len)


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Draw one index per row of logits [B, ..., V]: greedy when top_k == 1 or temperature == 0,
    else from softmax(logits / temperature) restricted to the top_k largest (0 = all) and to the
    smallest set whose probability reaches top_p (1 = all; the most likely is always kept).

    ``generators`` (one per b, or None for torch's default one) each draw row b's uniforms, which
    pick by inverse CDF: a row's draw depends on its logits and its generator alone."""
    if top_k == 1 or temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # A token is dropped when the more likely ones already reach top_p.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    cdf = probs.cumsum(dim=-1)
    if generators is None:
        uniforms = torch.rand(probs.shape[:-1], device=probs.device)
    else:
        if len(generators) != probs.shape[0]:
            raise ValueError(f"{len(generators)} generators for {probs.shape[0]} rows: give one per row")
        uniforms = torch.stack([torch.rand(probs.shape[1:-1], generator=g, device=probs.device) for g in generators])
    picked = torch.searchsorted(cdf, (uniforms * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return picked.clamp(max=probs.shape[-1] - 1)


def mask_padding(codes: torch.Tensor, code_lengths: torch.Tensor, special_token: int) -> torch.Tensor:
    """codes [B, K, T] with the frames at or beyond code_lengths [B] set to special_token.

    Codebook 0 of the first padding frames is an input when the delay pattern predicts the last
    codebooks of the final real frames: it must be the special token, not whatever pads the batch.
    """
    valid = torch.arange(codes.shape[-1], device=codes.device) < code_lengths[:, None]
    return codes.masked_fill(~valid[:, None], special_token)


IGNORE_INDEX = -100
"""Target of a position that holds no real code (cross-entropy's ignore_index)."""


def delayed_targets(codes: torch.Tensor, code_lengths: torch.Tensor, special_token: int) -> torch.Tensor:
    """Targets [B, K, T + K - 1] of AudioLM.forward's positions for codes [B, K, T]: the delayed
    codes, and IGNORE_INDEX where the delay pattern leaves a position empty or the frame is at or
    beyond code_lengths [B] (padding)."""
    B, K, T = codes.shape
    valid = torch.arange(T, device=codes.device) < code_lengths[:, None]  # [B, T]
    mask = build_delay_pattern(valid[:, None].expand(B, K, T).long(), 0).bool()
    return build_delay_pattern(codes, special_token).masked_fill(~mask, IGNORE_INDEX)


def delayed_cross_entropy(
    logits: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor, special_token: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of logits [B, K, T + K - 1, V] (AudioLM.forward) against codes [B, K, T]
    over the real codes of frames < code_lengths [B]: the mean over those positions per
    codebook, then over codebooks (MusicGen). Metrics: `ce_q{k}` per codebook."""
    B, K, _ = codes.shape
    targets = delayed_targets(codes, code_lengths, special_token)
    ce = F.cross_entropy(
        logits.float().flatten(0, 2), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(B, K, -1)
    ce_per_q = ce.sum(dim=(0, 2)) / (targets != IGNORE_INDEX).sum(dim=(0, 2)).clamp(min=1)
    metrics = {f"ce_q{k}": ce_per_q[k].detach() for k in range(K)}
    return ce_per_q.mean(), metrics
