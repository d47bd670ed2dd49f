"""One way to load a codec, whatever holds it: an exported folder (``aurora.exported``: every
token shard set carries the codec that made it in ``codec/``) or, trusted only, a codec training
run (its latest checkpoint) or one of its checkpoints. Tokenization, codec evaluation and the
recipes that decode tokens or latents all load through ``load_codec``."""

from dataclasses import dataclass
from pathlib import Path

from aurora.config import ConfigError, load_config, peek_task
from aurora.exported import (TRUST_FLAG, ModelKind, ModelLoadError, export_model, is_exported, load_model, load_weights,
                             require_trust, run_of)
from aurora.models.codec import Codec, CodecConfig, Discriminator
from aurora.tasks.codec.config import DISCRIMINATOR, CodecTrainConfig


@dataclass
class LoadedCodec:
    codec: Codec
    """In eval mode, on the CPU."""
    source: str
    """A few words on where it came from, for logs and manifests."""
    run_config: CodecTrainConfig | None
    """The training run's config when loaded from a run or checkpoint (its data, seed, eval
    settings); None for an exported codec."""


def _run_config(run: Path) -> CodecTrainConfig:
    if not (run / "config.yaml").is_file():
        raise ModelLoadError(f"{run} is not a codec: it is neither an exported codec nor a training run "
                             f"(no config.yaml); give an exported codec (e.g. TOKENS/codec) or a codec run")
    try:
        task = peek_task(run / "config.yaml")
        if task != "codec":
            raise ModelLoadError(f"{run} is a '{task}' run, not a codec run (task: codec)")
        return load_config(CodecTrainConfig, run / "config.yaml")
    except ConfigError as e:
        raise ModelLoadError(f"{run}: {e}") from None


CODEC = ModelKind("codec", CodecConfig, Codec, lambda codec: codec.cfg, lambda run: _run_config(run).model)


def load_codec(path: str | Path, *, trust: bool = False, what: str = "codec",
               how_to_trust: str = TRUST_FLAG) -> LoadedCodec:
    """The codec at ``path`` (``aurora.exported.load_model``: a run only if ``trust``);
    ``ModelLoadError`` if there is none."""
    loaded = load_model(path, CODEC, trust=trust, what=what, how_to_trust=how_to_trust)
    run_config = _run_config(loaded.run_dir) if loaded.run_dir is not None else None
    return LoadedCodec(loaded.model, loaded.source, run_config)


def load_discriminator(path: str | Path, *, trust: bool) -> Discriminator:
    """The discriminator of a GAN codec run or checkpoint (to fine-tune from; read only if
    ``trust``), in eval mode."""
    path = Path(path)
    if is_exported(path):
        raise ModelLoadError(f"{path} is an exported codec, which holds no discriminator: give its training run")
    require_trust(path, trust, "codec", TRUST_FLAG)
    cfg = _run_config(run_of(path))
    if not cfg.gan.enabled:
        raise ModelLoadError(f"{path} trained without a discriminator (gan.enabled=false)")
    discriminator = Discriminator(cfg.discriminator)
    load_weights(discriminator, path, trust=trust, what="codec", part=DISCRIMINATOR)
    return discriminator.eval()


def export_codec(codec: Codec, out_dir: str | Path) -> None:
    """A self-contained codec folder (``aurora.exported``)."""
    export_model(codec, CODEC, out_dir)
