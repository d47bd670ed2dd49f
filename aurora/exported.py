"""Models that come from elsewhere: exported folders, and the trust rule for training runs.

An exported folder is the one portable form of a model: ``model.safetensors`` (its weights,
read by safetensors, which runs no code; above a shard size, ``model-0000i-of-0000n.safetensors``
shards and their ``model.safetensors.index.json``, as transformers writes them) and ``config.json`` (which kind of model, its config
as plain JSON); a model may carry others in sub-folders (an LM its codec, ``codec/``). It is
written here (``export_model``) and read here (``load_model``, ``load_weights``), by every entry
point that takes a model as an input: ``data_prep.tokenize --codec``, ``tools.codec_eval``,
``aurora generate``, ``data_prep.make_pairs`` and ``data_prep.ref_logprobs --lm``,
``model.init_from`` and any frozen part's source (a teacher, a DPO reference).

A training run directory is not portable: DCP's ``.metadata``, aurora's rank files and
DeepSpeed's files are pickles, and reading a checkpoint unpickles some of them, which can run
any code. So a run given as an input is from elsewhere, whoever made it: aurora cannot tell
who wrote it, and a run directory is a trust boundary. It is read only when the user says so:
``--trust-checkpoint`` on a command line, ``run.trust_checkpoint=true`` in a training config.
The one run trusted without asking is a job's own ``run.dir``, which it writes and resumes
(whoever can write there can change what the job runs anyway).
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import load_torch_model, save_torch_state_dict
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from torch import nn

from aurora.runs import load_model_weights, resolve_checkpoint, step_dirname

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
"""The index of a sharded folder's weights: which shard holds each tensor."""
MAX_SHARD_SIZE = "5GB"
"""Largest weights file an export writes before it shards (transformers' default)."""
CONFIG = "config.json"
FORMAT = "aurora-export/1"
"""``config.json``'s ``format``: the layout of an exported folder."""
TRUST_FLAG = "--trust-checkpoint"
TRUST_FIELD = "run.trust_checkpoint=true"


class ModelLoadError(ValueError):
    """No model can be loaded from a path; the message names the input, what is wrong and what to do."""


@dataclass(frozen=True)
class ModelKind:
    """A kind of model an exported folder can hold."""

    name: str
    """Its name in ``config.json``."""
    config_class: type
    """The dataclass of its config."""
    build: Callable[[Any], nn.Module]
    """The model of a config, with any weights."""
    config_of: Callable[[nn.Module], Any]
    """The config a model was built from."""
    run_config: Callable[[Path], Any]
    """The model config of a training run directory (``ModelLoadError`` if it trains no such model)."""


@dataclass
class LoadedModel:
    model: nn.Module
    """In eval mode, on the CPU."""
    config: Any
    """Its ``ModelKind.config_class`` config."""
    source: str
    """A few words on where it came from, for logs and manifests."""
    run_dir: Path | None
    """The training run it came from (its ``config.yaml`` says how it trained); None for an export."""
    checkpoint: Path | None
    """The checkpoint directory it came from; None for an export."""


def is_exported(path: Path) -> bool:
    return (Path(path) / WEIGHTS).is_file() or (Path(path) / WEIGHTS_INDEX).is_file()


@contextlib.contextmanager
def atomic_folder(out_dir: str | Path, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to write into, renamed to ``out_dir`` once the
    block completes (removed if it raises), so a reader never sees half an export. An
    existing ``out_dir`` is replaced only if ``replace`` or empty (else ``FileExistsError``,
    before anything is written)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not replace and (out_dir.is_file() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty: give a new or empty folder, or pass --force to "
                              f"replace it")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.is_file():
        out_dir.unlink()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def write_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
    """``state`` as safetensors in ``folder``: ``model.safetensors``, or shards and their index
    above ``max_shard_size`` (huggingface_hub's writer, the one transformers uses; it writes
    each tensor from its own memory, so no second copy of the weights is made)."""
    save_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()}, folder,
                          max_shard_size=max_shard_size, metadata={"format": "pt"})


def write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=1) + "\n")


def config_document(kind: ModelKind, config: Any) -> dict:
    """``config.json`` of an exported ``kind`` model of ``config``."""
    config = kind_config(kind, config)
    return {"format": FORMAT, "kind": kind.name,
            "config": OmegaConf.to_container(OmegaConf.structured(config), enum_to_str=True)}


def write_exported(folder: Path, kind: ModelKind, config: Any, state: dict[str, torch.Tensor],
                   max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
    """An exported folder's own files (weights and ``config.json``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CONFIG, config_document(kind, config))
    write_weights(state, folder, max_shard_size)


def export_model(model: nn.Module, kind: ModelKind, out_dir: str | Path,
                 beside: dict[str, tuple[nn.Module, ModelKind]] | None = None) -> None:
    """Write ``model`` as an exported folder, with each of ``beside`` in a sub-folder of its
    name, into a temporary name then renamed, so a reader never sees half of one."""
    with atomic_folder(out_dir) as tmp:
        for where, (part, part_kind) in [(tmp, (model, kind)), *((tmp / n, m) for n, m in (beside or {}).items())]:
            write_exported(where, part_kind, part_kind.config_of(part), part.state_dict())


def kind_config(kind: ModelKind, config: Any) -> Any:
    """``config`` as exactly ``kind.config_class`` (a recipe's subclass adds fields that say
    where a model starts from or how it trains, not what it is)."""
    return kind.config_class(**{f.name: getattr(config, f.name) for f in fields(kind.config_class)})


def _exported_config(path: Path, kind: ModelKind, what: str) -> Any:
    try:
        document = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{what} {path} holds weights but no {CONFIG}: export the model again") from None
    except ValueError as e:
        raise ModelLoadError(f"{what} {path}/{CONFIG} is not JSON ({e}): export the model again") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("config"), dict):
        raise ModelLoadError(f"{what} {path}/{CONFIG} is not an aurora export ({FORMAT}: format, kind, config): "
                             f"export the model again")
    if document.get("kind") != kind.name:
        raise ModelLoadError(f"{what} {path} holds a '{document.get('kind')}' model, not a '{kind.name}': "
                             f"give an exported {kind.name}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(kind.config_class), document["config"]))
    except OmegaConfBaseException as e:
        raise ModelLoadError(f"{what} {path}/{CONFIG}: {str(e).splitlines()[0]}: export the model again") from None


def _existing_dir(path: str | Path, what: str, noun: str = "model") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{what} {path} {'is a file' if path.exists() else 'does not exist'}: give an exported "
                             f"{noun} folder ({WEIGHTS} + {CONFIG}) or a training run directory")
    return path


def run_of(path: Path) -> Path:
    """The run directory of ``path``: itself, or two levels up from one of its checkpoints."""
    is_checkpoint = (path / ".metadata").is_file() or any(path.glob("rank_*.pt"))
    return path.parent.parent if is_checkpoint else path


def require_trust(path: Path, trust: bool, what: str, how_to_trust: str, noun: str = "model") -> None:
    """``ModelLoadError`` unless ``path`` is a training run or checkpoint the user trusts (see
    the module's docstring)."""
    if not ((run_of(path) / "config.yaml").is_file() or (path / "checkpoints").is_dir()
            or (path / ".metadata").is_file()):
        raise ModelLoadError(f"{what} {path} is not a {noun}: it holds neither {WEIGHTS} (an exported folder) nor a "
                             f"training run's config.yaml or checkpoints; give an exported {noun} or a training run")
    if not trust:
        raise ModelLoadError(
            f"{what} {path} is a training run directory, not an exported model ({WEIGHTS} + {CONFIG}). Its "
            f"checkpoint files are pickles (DCP's .metadata, rank files, DeepSpeed's), which can run any code when "
            f"read, so aurora reads a run from elsewhere only if you trust it: pass {how_to_trust} if you made it "
            f"or trust whoever did, or load an exported folder of it instead")


def read_config(path: str | Path, kind: ModelKind, *, trust: bool, what: str, how_to_trust: str = TRUST_FLAG) -> Any:
    """The config of the ``kind`` model at ``path``, without its weights; refused where
    ``load_model`` refuses (a run not trusted), so an entry point can check it first."""
    path = _existing_dir(path, what, kind.name)
    if is_exported(path):
        return _exported_config(path, kind, what)
    require_trust(path, trust, what, how_to_trust, kind.name)
    return kind_config(kind, kind.run_config(run_of(path)))


def load_model(path: str | Path, kind: ModelKind, *, trust: bool, what: str, how_to_trust: str = TRUST_FLAG,
               step: int | None = None) -> LoadedModel:
    """The ``kind`` model at ``path``: an exported folder, or (``trust`` only) a training run
    (its latest complete checkpoint, or that of ``step``) or one of its checkpoints. ``what``
    names the input in messages (``--codec``); ``how_to_trust`` is what the user sets to trust a
    run (the flag or the config field)."""
    config = read_config(path, kind, trust=trust, what=what, how_to_trust=how_to_trust)
    path = Path(path)
    model = kind.build(config)
    if is_exported(path):
        if step is not None:
            raise ModelLoadError(f"{what} {path} is an exported model, which holds one set of weights: a step "
                                 f"chooses a checkpoint of a training run")
        load_weights(model, path, trust=False, what=what)
        return LoadedModel(model.eval(), config, f"exported {kind.name} {path}", None, None)
    run = run_of(path)
    checkpoint = load_weights(model, path if step is None else run / "checkpoints" / step_dirname(step), trust=True,
                              what=what)
    return LoadedModel(model.eval(), config, f"{kind.name} run {run} checkpoint {checkpoint.name}", run, checkpoint)


def load_weights(model: nn.Module, path: str | Path, *, trust: bool, what: str, how_to_trust: str = TRUST_FLAG,
                 part: str | None = None) -> Path:
    """Load into ``model`` the weights of an exported folder or (``trust`` only) of a training
    run or checkpoint (its part ``part``, if given); the folder or checkpoint they came from."""
    path = _existing_dir(path, what)
    if is_exported(path):
        if part is not None:
            raise ModelLoadError(f"{what} {path} is an exported model, which holds no part '{part}'")
        try:
            load_torch_model(model, path, strict=True)  # safetensors only: no pickle
        except (SafetensorError, RuntimeError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{what} {path}'s weights do not fit this model: "
                                 f"{' '.join(str(e).split())[:400]}") from None
        return path
    require_trust(path, trust, what, how_to_trust)
    try:
        checkpoint = resolve_checkpoint(path)
    except FileNotFoundError as e:
        raise ModelLoadError(f"{what} {str(e).splitlines()[0]}; train until the run saves a checkpoint "
                             f"(trainer.checkpoint_every), or give an exported folder") from None
    load_model_weights(model, checkpoint, part=part)
    return checkpoint
