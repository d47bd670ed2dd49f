"""Config of an aurora audio LM (written by ``aurora export --format hf``): a Qwen2 backbone's
config plus the audio extras. Loaded by ``AutoConfig.from_pretrained(DIR, trust_remote_code=True)``;
the stock ``Qwen2Config`` reads the same file and ignores the extras."""

from transformers import Qwen2Config


class AuroraAudioLMConfig(Qwen2Config):
    audio_n_q: int = 4
    """Codebooks modelled in parallel (MusicGen's delay pattern)."""
    audio_codebook_size: int = 1024
    """Codes per codebook; the code ``audio_codebook_size`` is the delay pattern's special token."""
    max_text_len: int = 256
    """Text tokens per caption: PAD.. BOS UTF-8 bytes SEP (text token ids 0-258)."""
    codec: dict | None = None
    """The codec the tokens are of (kind, sample rate, frame rate, n_q, codebook size)."""
