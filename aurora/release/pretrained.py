"""Pretrained weights in (``model.init_from``): where a recipe's model starts from.

- ``hf:DIR``: a local transformers Qwen2 folder (``Qwen2ForCausalLM`` or ``Qwen2Model``, as
  ``save_pretrained`` writes it, or an ``aurora export --format hf`` folder), into the LM's
  backbone: embeddings, layers and final norm. The folder's ``config.json`` must describe the
  backbone the config asks for (every differing field is listed); its text head, if any, is
  not read (aurora's LM has none), and the audio extras start fresh.
- ``run:RUN[@STEP]``: the main model of another run's checkpoint (the latest complete one, or
  that of STEP), whatever engine wrote it; the run's files are pickles, so it needs
  ``run.trust_checkpoint=true``.

The weights are read with safetensors (no code runs); a folder without ``*.safetensors`` is
refused rather than read from pickles.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from torch import nn

from aurora.config import ConfigError
from aurora.exported import TRUST_FIELD, load_weights
from aurora.models.transformer import TransformerConfig

HF, RUN = "hf:", "run:"
QWEN2_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen2Model", "AuroraAudioLM")
"""The ``architectures`` of a folder whose tensors are a plain Qwen2 decoder under ``model.``
(or at the top level: ``Qwen2Model``)."""
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "rope_theta")
"""``TransformerConfig`` fields that decide the backbone's tensors and numbers, compared with the
folder's ``config.json``."""
_HEAD = "lm_head."
_HF_PREFIX = "model."


@dataclass(frozen=True)
class InitFrom:
    kind: str
    """``HF`` or ``RUN``."""
    path: Path
    step: Optional[int] = None
    """``run:`` only: the checkpoint's step (None: the latest complete one)."""


def parse_init_from(spec: str, field: str = "model.init_from") -> InitFrom:
    """``hf:DIR`` or ``run:RUN[@STEP]``; ``ConfigError`` naming the accepted forms otherwise."""
    forms = f"give {field}=hf:DIR (a transformers Qwen2 folder) or {field}=run:RUN[@STEP] (a training run)"
    if spec.startswith(HF) and spec[len(HF):]:
        return InitFrom(HF, Path(spec[len(HF):]))
    if spec.startswith(RUN) and spec[len(RUN):]:
        run, at, step = spec[len(RUN):].rpartition("@")
        if not at:
            return InitFrom(RUN, Path(step))
        if not (run and step.isdigit()):
            raise ConfigError(f"config: {field}={spec}: give the run, then '@' and a step number, e.g. run:RUN@200")
        return InitFrom(RUN, Path(run), int(step))
    raise ConfigError(f"config: {field}={spec} is neither hf:DIR nor run:RUN[@STEP]: {forms}")


def qwen2_config(folder: Path, field: str = "model.init_from") -> dict:
    """The ``config.json`` of a transformers Qwen2 folder; ``ConfigError`` if it is not one."""
    what = f"config: {field}=hf:{folder}"
    if not folder.is_dir():
        raise ConfigError(f"{what} is not a folder: give a local transformers folder (save_pretrained's output)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} holds no config.json: give a transformers model folder") from None
    except ValueError as e:
        raise ConfigError(f"{what}/config.json is not JSON ({e})") from None
    architectures = config.get("architectures") or []
    if config.get("model_type") != "qwen2" or not set(architectures) & set(QWEN2_ARCHITECTURES):
        named = ", ".join(architectures) or "no architectures"
        raise ConfigError(f"{what} is a '{config.get('model_type')}' model ({named}), not a Qwen2 one: the LM's "
                          f"backbone is the Qwen2 decoder; give a Qwen2ForCausalLM or Qwen2Model folder")
    if config.get("hidden_act", "silu") != "silu" or config.get("use_sliding_window"):
        raise ConfigError(f"{what}: hidden_act={config.get('hidden_act')}, use_sliding_window="
                          f"{config.get('use_sliding_window')}; aurora's Qwen2 block is SiLU without sliding window")
    return config


def _folder_value(config: dict, name: str):
    if name == "rope_theta" and "rope_theta" not in config:  # transformers 5 writes rope_parameters
        return (config.get("rope_parameters") or {}).get("rope_theta")
    return config.get(name)


def check_backbone_shape(backbone: TransformerConfig, folder: Path, field: str = "model.init_from") -> None:
    """``ConfigError`` listing every ``SHAPE_FIELDS`` value where ``backbone`` and the folder differ."""
    config = qwen2_config(folder, field)
    differ = [f"model.backbone.{name}={getattr(backbone, name)!r} but {_folder_value(config, name)!r}"
              for name in SHAPE_FIELDS if _folder_value(config, name) != getattr(backbone, name)]
    if differ:
        raise ConfigError(f"config: the backbone differs from {field}=hf:{folder}'s config.json ({'; '.join(differ)}): "
                          f"set model.backbone to the folder's shape (or a preset of it)")


def read_qwen2_backbone(folder: Path) -> dict[str, torch.Tensor]:
    """The decoder's tensors of a Qwen2 folder, named as in ``Qwen2Model`` (no text head, no audio extras)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"config: model.init_from=hf:{folder} holds no *.safetensors (only safetensors are read, "
                          f"never pickles): save it with save_pretrained(safe_serialization=True)")
    state = {}
    for path in files:
        with safe_open(path, "pt") as f:
            for name in f.keys():
                if name.startswith(_HEAD):
                    continue
                if name.startswith(_HF_PREFIX):
                    state[name[len(_HF_PREFIX):]] = f.get_tensor(name)
                elif "." in name and name.split(".")[0] in ("embed_tokens", "layers", "norm"):
                    state[name] = f.get_tensor(name)  # a Qwen2Model folder: no prefix
    return state


def load_qwen2_backbone(backbone: nn.Module, folder: Path) -> None:
    """Load a Qwen2 folder's decoder into ``backbone`` (aurora's ``Qwen2Model``), strictly."""
    state = read_qwen2_backbone(folder)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"config: model.init_from=hf:{folder} does not hold aurora's Qwen2 decoder: missing "
                          f"{missing[:5]}, unexpected {unexpected[:5]}")


def init_model_from(model: nn.Module, spec: InitFrom, *, trust: bool, backbone: Optional[nn.Module] = None) -> None:
    """Load ``spec``'s weights into ``model`` (``run:``) or into its ``backbone`` (``hf:``)."""
    if spec.kind == HF:
        if backbone is None:
            raise ConfigError(f"config: model.init_from=hf:{spec.path}: this recipe's model has no Qwen2 backbone; "
                              f"give model.init_from=run:RUN")
        load_qwen2_backbone(backbone, spec.path)
        return
    from aurora.release.source import checkpoint_of

    where = spec.path if spec.step is None else checkpoint_of(spec.path, spec.step, "model.init_from")
    load_weights(model, where, trust=trust, what="model.init_from", how_to_trust=TRUST_FIELD)
