"""One way to load a codec, whatever holds it: a codec training run (its latest checkpoint), one
of its checkpoints, or an exported folder (``config.yaml`` + ``model.safetensors``, as every
token shard set carries the codec that made it). Tokenization, codec evaluation and the recipes
that decode tokens or latents all load through ``load_codec``."""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from aurora.config import ConfigError, load_config, peek_task
from aurora.models.codec import Codec, CodecConfig, Discriminator
from aurora.runs import load_model_weights
from aurora.tasks.codec.config import DISCRIMINATOR, CodecTrainConfig

EXPORTED_WEIGHTS = "model.safetensors"
EXPORTED_CONFIG = "config.yaml"
_WHAT = ("give a codec training run (config.yaml + checkpoints/), one of its checkpoints (RUN/checkpoints/step_N) "
         f"or an exported codec ({EXPORTED_CONFIG} + {EXPORTED_WEIGHTS}, e.g. TOKENS/codec)")


class CodecLoadError(ValueError):
    """``path`` holds no loadable codec; the message names the path, what is wrong and what to do."""


@dataclass
class LoadedCodec:
    codec: Codec
    """In eval mode, on the CPU."""
    source: str
    """A few words on where it came from, for logs and manifests."""
    run_config: CodecTrainConfig | None
    """The training run's config when loaded from a run or checkpoint (its data, seed, eval
    settings); None for an exported codec."""


def _is_checkpoint(path: Path) -> bool:
    return (path / ".metadata").is_file() or any(path.glob("rank_*.pt"))


def _run_config(run: Path, path: Path) -> CodecTrainConfig:
    if not (run / "config.yaml").is_file():
        where = f" (nor has its run {run})" if run != path else ""
        raise CodecLoadError(f"{path} is not a codec: it has no config.yaml{where}; {_WHAT}")
    try:
        task = peek_task(run / "config.yaml")
        if task != "codec":
            raise CodecLoadError(f"{run} is a '{task}' run, not a codec run (task: codec): {_WHAT}")
        return load_config(CodecTrainConfig, run / "config.yaml")
    except ConfigError as e:
        raise CodecLoadError(f"{path}: {e}") from None


def load_codec(path: str | Path) -> LoadedCodec:
    """The codec at ``path``; ``CodecLoadError`` if there is none."""
    path = Path(path)
    if not path.exists():
        raise CodecLoadError(f"{path} does not exist: {_WHAT}")
    if not path.is_dir():
        raise CodecLoadError(f"{path} is a file, not a directory: {_WHAT}")
    if (path / EXPORTED_WEIGHTS).is_file():
        if not (path / EXPORTED_CONFIG).is_file():
            raise CodecLoadError(f"{path} holds {EXPORTED_WEIGHTS} but no {EXPORTED_CONFIG}: re-export the codec "
                                 f"(aurora.tasks.codec.export_codec)")
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CodecConfig),
                                                  OmegaConf.load(path / EXPORTED_CONFIG)))
        codec = Codec(cfg)
        codec.load_state_dict(load_file(path / EXPORTED_WEIGHTS))
        return LoadedCodec(codec.eval(), f"exported codec {path}", None)
    checkpoint = _is_checkpoint(path)
    run = path.parent.parent if checkpoint else path
    cfg = _run_config(run, path)
    codec = Codec(cfg.model)
    try:
        loaded = load_model_weights(codec, path)
    except FileNotFoundError as e:
        raise CodecLoadError(f"{str(e).splitlines()[0]}; train the codec until it saves a checkpoint "
                             f"(trainer.checkpoint_every), or point at an exported codec") from None
    where = f"codec run {run} checkpoint {loaded.name}"
    return LoadedCodec(codec.eval(), where, cfg)


def load_discriminator(path: str | Path) -> Discriminator:
    """The discriminator of a GAN codec run or checkpoint (to fine-tune from), in eval mode."""
    path = Path(path)
    run = path.parent.parent if _is_checkpoint(path) else path
    cfg = _run_config(run, path)
    if not cfg.gan.enabled:
        raise CodecLoadError(f"{run} trained without a discriminator (gan.enabled=false)")
    discriminator = Discriminator(cfg.discriminator)
    load_model_weights(discriminator, path, part=DISCRIMINATOR)
    return discriminator.eval()


def export_codec(codec: Codec, out_dir: str | Path) -> None:
    """A self-contained codec folder (config.yaml + model.safetensors), written into a temporary
    name and renamed, so a reader never sees half of one."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / EXPORTED_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(codec.cfg)))
    save_file({k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}, tmp / EXPORTED_WEIGHTS)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
