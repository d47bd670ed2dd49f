"""Training FLOPs (forward + backward) of the Qwen2 decoder and the AudioLM, from their configs.

The count is the usual dense-matmul one (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022,
appendix B), which is also what `torch.utils.flop_counter.FlopCounterMode` counts:

    per token = 6 * N  +  12 * L * h * S  (+ 6 * h * V for an LM head)

- N: weights of the decoder layers' linear maps, with GQA counted at its real width:
  per layer h*h (q) + 2 * h*(kv_heads*head_dim) (k, v) + h*h (o) + 3 * h*I (SwiGLU).
  A matmul of an [m, k] by a [k, n] costs 2*m*k*n; backward costs twice forward (the gradient
  with respect to the input and to the weight), hence 6 per weight per token. Biases, norms,
  RoPE, activations and embedding lookups are not matmuls and are not counted.
- Attention: per layer and token, q.k^T and p.v each cost 2 * S * h forward (h = heads *
  head_dim; GQA does not shrink them, every query head attends), so 12 * L * h * S for
  forward + backward. This counts the full S x S score matrix, PaLM's convention: a causal
  kernel (FlashAttention with is_causal) skips about half of it, so the work actually done is
  about 6 * L * h * S, and an MFU quoted with this count includes the masked half.
- LM head: h * V weights, 6 * h * V per token. The AudioLM has no vocabulary head; instead its
  n_q codebook heads (h * codebook_size each) read only the audio positions.

The numbers are ints: exact counts of what the formula describes, so tests can compare them
with FlopCounterMode to the FLOP.

The codec has no closed form here: `codec_train_flops` counts a real forward + backward with
FlopCounterMode (convolutions, transposed convolutions and the quantizer's matmuls).
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aurora.models.audio_lm import AudioLMConfig
from aurora.models.codec import Codec
from aurora.models.transformer import TransformerConfig


def decoder_matmul_params(cfg: TransformerConfig) -> int:
    """Weights of all decoder layers' linear maps (q, k, v, o, gate, up, down); no embeddings,
    biases or norms."""
    h, kv_width = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    attention = 2 * h * h + 2 * h * kv_width
    mlp = 3 * h * cfg.intermediate_size
    return cfg.num_hidden_layers * (attention + mlp)


def attention_flops_per_token(cfg: TransformerConfig, seq_len: int) -> int:
    """Score and value matmuls, forward + backward, per token of a length-seq_len sequence:
    12 * layers * hidden * seq_len (the full, non-causal score matrix; see the module docstring)."""
    return 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def transformer_train_flops_per_token(cfg: TransformerConfig, seq_len: int, lm_head: bool = True) -> int:
    """Forward + backward FLOPs per token of `Qwen2ForCausalLM` (lm_head=True) or `Qwen2Model`
    (lm_head=False) on sequences of seq_len tokens: 6*N + 12*L*h*S (+ 6*h*V)."""
    head = 6 * cfg.hidden_size * cfg.vocab_size if lm_head else 0
    return 6 * decoder_matmul_params(cfg) + attention_flops_per_token(cfg, seq_len) + head


def audio_lm_seq_len(cfg: AudioLMConfig, frames: int) -> int:
    """Positions the AudioLM's backbone sees for `frames` audio frames: the text prefix plus the
    delayed frames fed as input (frames + n_q - 1 delayed steps, all but the last)."""
    return cfg.max_text_len + frames + cfg.n_q - 2


def audio_lm_train_flops(cfg: AudioLMConfig, frames: int) -> int:
    """Forward + backward FLOPs of one AudioLM example (caption + `frames` audio frames), as in
    `AudioLM.forward` followed by the loss and backward.

    The backbone runs on all S = audio_lm_seq_len positions (6*N + 12*L*h*S per position); the
    n_q codebook heads run on the frames + n_q - 1 positions from SEP on (6 * h * codebook_size
    per head and position). Code and text embeddings are lookups: no FLOPs.
    """
    b = cfg.backbone
    seq = audio_lm_seq_len(cfg, frames)
    backbone = seq * transformer_train_flops_per_token(b, seq, lm_head=False)
    heads = (frames + cfg.n_q - 1) * 6 * b.hidden_size * cfg.codebook_size * cfg.n_q
    return backbone + heads


def codec_train_flops(model: Codec, seconds: float = 1.0) -> int:
    """Forward + backward FLOPs of `model` on one clip of `seconds` of audio, counted by
    FlopCounterMode on a run on the model's device (on the meta device: shapes only, the same
    count). The backward starts from the reconstruction's mean absolute value plus the
    quantizer losses: it reaches every parameter as the training loss does, and the loss's own
    STFTs are not model FLOPs (nor matmuls).
    Every layer is a convolution or a per-frame matmul, so the count is linear in `seconds`."""
    device = next(model.parameters()).device
    samples = round(seconds * model.cfg.sample_rate)
    wav = torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(0)).to(device)
    with FlopCounterMode(display=False) as counter:
        out = model(wav)
        (out.recon.abs().mean() + out.commitment_loss + out.codebook_loss).backward()
    return counter.get_total_flops()


def discriminator_train_flops(model: nn.Module, sample_rate: int, seconds: float = 1.0) -> int:
    """FLOPs the GAN step spends in the discriminator per clip of `seconds`: its own turn
    (forward + backward on the real and the generated clip) and the generator's turn (forward +
    backward on the generated clip, forward on the real one), counted by FlopCounterMode."""
    device = next(model.parameters()).device
    wav = torch.randn(1, 1, round(seconds * sample_rate), generator=torch.Generator().manual_seed(0)).to(device)
    with FlopCounterMode(display=False) as counter:
        sum(maps[-1].mean() for maps in model(torch.cat([wav, wav]))).backward()
        fake = wav.clone().requires_grad_()
        sum(maps[-1].mean() for maps in model(fake)).backward()
        with torch.no_grad():
            model(wav)
    return counter.get_total_flops()
