"""The audio LM as a transformers folder (``aurora export --format hf``), and back.

The backbone is a plain Qwen2: its tensors are written under ``model.`` (as
``Qwen2ForCausalLM`` names them) with the ``Qwen2Config`` fields in ``config.json``, so
``Qwen2Model.from_pretrained(DIR)`` loads it with the stock class, reporting only the audio
extras as unused. The LM has no text head: tied or not, no ``lm_head.weight`` is written
(transformers ties it to the embedding when ``tie_word_embeddings``). The audio extras
(``code_embeddings.K``, ``heads.K``, the delay pattern, the caption encoding) come with remote
code (``auto_map``: ``configuration_aurora_audio_lm.py``, ``modeling_aurora_audio_lm.py``, from
the templates in ``hf_code/``, as MOSS-TTS and Higgs-Audio ship theirs), so
``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` builds the whole LM. A ``README.md``
model card names the codec the tokens need (carried in ``codec/`` as aurora's exported folder).
"""

import hashlib
import inspect
import json
from dataclasses import asdict
from pathlib import Path

import torch

from aurora.exported import CONFIG, read_config, write_json, write_weights
from aurora.generation import LM_CODEC_DIR, SamplingSettings
from aurora.models import audio_lm, delay_pattern
from aurora.models.audio_lm import AudioLMConfig
from aurora.models.transformer import TransformerConfig
from aurora.release.source import RunModel

CODE_DIR = Path(__file__).with_name("hf_code")
CONFIG_CODE = "configuration_aurora_audio_lm.py"
MODEL_CODE = "modeling_aurora_audio_lm.py"
GENERATION_CONFIG = "generation_config.json"
MODEL_CARD = "README.md"
BACKBONE_PREFIX = ("backbone.", "model.")
"""aurora's prefix of the backbone's tensors, and transformers' (``Qwen2ForCausalLM.model``)."""
AUDIO_FIELDS = {"audio_n_q": "n_q", "audio_codebook_size": "codebook_size", "max_text_len": "max_text_len"}
"""config.json's audio fields and the AudioLMConfig fields they hold."""
_COPIED = [delay_pattern._delayed_index, delay_pattern.build_delay_pattern, delay_pattern.revert_delay_pattern,
           delay_pattern.delay_pattern_mask, audio_lm.truncate_utf8, audio_lm.encode_text, audio_lm.sample]
"""aurora's functions the remote code runs, copied into it (it must run without aurora)."""
_MARKER = "# <aurora functions>"


def to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ours, theirs = BACKBONE_PREFIX
    return {(theirs + k[len(ours):] if k.startswith(ours) else k): v for k, v in state.items()}


def from_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ours, theirs = BACKBONE_PREFIX
    return {(ours + k[len(theirs):] if k.startswith(theirs) else k): v for k, v in state.items()}


def qwen2_fields(backbone: TransformerConfig) -> dict:
    """``Qwen2Config``'s fields of aurora's backbone (the exact Qwen2 block: SiLU, no sliding
    window, RoPE's default type)."""
    fields = asdict(backbone)
    return {**fields, "hidden_act": "silu", "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": backbone.num_hidden_layers, "attention_dropout": 0.0, "initializer_range": 0.02,
            "rope_parameters": {"rope_type": "default", "rope_theta": backbone.rope_theta}, "use_cache": True}


def hf_config(config: AudioLMConfig, dtype: torch.dtype, codec: dict | None) -> dict:
    stem = lambda name: name.removesuffix(".py")
    return {"architectures": ["AuroraAudioLM"], "model_type": "qwen2",
            "auto_map": {"AutoConfig": f"{stem(CONFIG_CODE)}.AuroraAudioLMConfig",
                         "AutoModel": f"{stem(MODEL_CODE)}.AuroraAudioLM"},
            **qwen2_fields(config.backbone),
            "pad_token_id": audio_lm.PAD_ID, "bos_token_id": audio_lm.BOS_ID, "eos_token_id": None,
            "dtype": str(dtype).removeprefix("torch."),
            **{hf: getattr(config, ours) for hf, ours in AUDIO_FIELDS.items()}, "codec": codec}


def modeling_code() -> str:
    """The remote modeling file: the template with aurora's functions copied in."""
    functions = "\n\n".join(inspect.getsource(f) for f in _COPIED)
    constants = "".join(f"{name} = {getattr(audio_lm, name)}\n" for name in ("PAD_ID", "BOS_ID", "SEP_ID"))
    header = "from collections.abc import Sequence\n\nimport torch.nn.functional as F\n\n"
    code = (CODE_DIR / MODEL_CODE).read_text()
    return code.replace(_MARKER, f"{_MARKER} (copied at export)\n{header}{constants}\n\n{functions}# </aurora functions>")


def codec_record(codec_dir: Path | None) -> dict | None:
    """What the model card and config say of the codec in ``codec_dir`` (aurora's export)."""
    from aurora.tasks.codec.load import CODEC

    if codec_dir is None:
        return None
    config = read_config(codec_dir, CODEC, trust=False, what="the LM's codec")
    digest = hashlib.sha256()
    for path in sorted(codec_dir.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return {"id": f"sha256:{digest.hexdigest()[:24]}", "folder": LM_CODEC_DIR, "sample_rate": config.sample_rate,
            "frame_rate": config.frame_rate, "n_q": config.n_q, "codebook_size": config.codebook_size}


def generation_config(settings: SamplingSettings) -> dict:
    return {"bos_token_id": audio_lm.BOS_ID, "pad_token_id": audio_lm.PAD_ID, "do_sample": settings.top_k != 1,
            "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p}


def model_card(source: RunModel, codec: dict | None, training_config: dict) -> str:
    config: AudioLMConfig = source.config
    codec_lines = ("No codec was found beside the run (its token shards' manifest names none): decode the codes "
                   "with the codec that made the training tokens." if codec is None else
                   f"- id: `{codec['id']}` (aurora's exported codec, in `{codec['folder']}/`)\n"
                   f"- sample rate: {codec['sample_rate']} Hz, frame rate: {codec['frame_rate']:g} Hz\n"
                   f"- n_q: {codec['n_q']}, codebook size: {codec['codebook_size']}")
    return f"""---
library_name: transformers
tags: [audio, text-to-audio, aurora]
---

# Audio LM exported by aurora

A caption-conditioned audio language model on a Qwen2 backbone ({config.backbone.num_hidden_layers} layers,
hidden size {config.backbone.hidden_size}), trained by aurora's `{source.task}` recipe: run `{source.run}`,
checkpoint `{source.checkpoint.name}`. It predicts {config.n_q} codebooks of {config.codebook_size} codes in
MusicGen's delay pattern.

## Codec

The codes are those of this codec; decode them with it:

{codec_lines}

## Caption tokenizer

Byte-level, no tokenizer file: `PAD({audio_lm.PAD_ID}) .. PAD BOS({audio_lm.BOS_ID}) <UTF-8 bytes> SEP({audio_lm.SEP_ID})`,
left-padded to {config.max_text_len} tokens (`encode_text` in `{MODEL_CODE}`). Text tokens go through the
backbone's `embed_tokens`; the audio codes through one embedding per codebook, summed.

## Use

```python
import torch
from transformers import AutoModel, Qwen2Model

lm = AutoModel.from_pretrained("DIR", trust_remote_code=True).eval()   # the whole audio LM
codes = lm.generate_codes(["a low tone"], num_frames=50, top_k=50,
                          generator=torch.Generator().manual_seed(0))  # [1, {config.n_q}, 50]
backbone = Qwen2Model.from_pretrained("DIR")                           # the Qwen2 backbone alone
```

`aurora generate DIR/../safetensors-export` samples with classifier-free guidance and decodes with the codec.

## Training config

```json
{json.dumps(training_config, indent=1)}
```
"""


def write_hf(source: RunModel, folder: Path, options) -> None:
    """The transformers folder of an audio LM run's checkpoint into ``folder``."""
    from aurora.release.export import companions, copy_exported, training_config_document

    codec_dir = companions(source).get(LM_CODEC_DIR)
    codec = codec_record(codec_dir)
    state = to_hf_names(source.model.state_dict())
    dtype = next(iter(state.values())).dtype
    write_json(folder / CONFIG, hf_config(source.config, dtype, codec))
    write_json(folder / GENERATION_CONFIG, generation_config(source.train_config.generation))
    write_weights(state, folder, options.max_shard_size)
    (folder / CONFIG_CODE).write_text((CODE_DIR / CONFIG_CODE).read_text())
    (folder / MODEL_CODE).write_text(modeling_code())
    training = training_config_document(source)
    (folder / MODEL_CARD).write_text(model_card(source, codec, training))
    if codec_dir is not None:
        copy_exported(codec_dir, folder / LM_CODEC_DIR)
