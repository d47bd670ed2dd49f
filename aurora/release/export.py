"""``aurora export``: one checkpoint of a training run as a folder others load.

    aurora export RUN [--step N] --format safetensors|hf|dac --out DIR [--dtype fp32|bf16]
                  [--max-shard-size 5GB] [--force] [--trust-checkpoint]

It runs in one CPU process, whatever engine and world size trained the run
(``aurora.release.source``). The folder is written under a temporary name and renamed when
complete, so an interrupted export never leaves a folder that looks finished; a non-empty
``--out`` is replaced only with ``--force``. Formats:

- ``safetensors`` (every recipe): aurora's exported folder (``aurora.exported``: weights,
  ``config.json``), the run's resolved config (``training_config.json``) and where it came
  from (``export.json``); an LM also carries the codec of its tokens in ``codec/``, so
  ``aurora generate DIR`` samples from it.
- ``hf`` (the audio LM): a transformers folder (``aurora.release.hf``).
- ``dac`` (the codec): a transformers ``DacModel`` folder (``aurora.release.dac``).
"""

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from aurora.exported import MAX_SHARD_SIZE, ModelLoadError, atomic_folder, is_exported, write_exported, write_json
from aurora.release.source import RunModel, read_run_model

TRAINING_CONFIG = "training_config.json"
"""The run's resolved config, as JSON, in every export."""
PROVENANCE = "export.json"
"""Which run, checkpoint and step an export holds, and in which dtype."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class ExportOptions:
    dtype: str = "fp32"
    """A key of ``DTYPES``."""
    max_shard_size: int | str = MAX_SHARD_SIZE
    """Largest weights file before the weights are sharded (``"5GB"``, ``"200KB"`` or bytes)."""


@dataclass(frozen=True)
class Format:
    name: str
    kinds: tuple[str, ...] | None
    """The model kinds it holds (``ModelKind.name``); None: every kind."""
    write: Callable[[RunModel, Path, ExportOptions], None]
    """Writes the export into an empty folder."""


def training_config_document(source: RunModel) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(source.train_config), enum_to_str=True)


def provenance(source: RunModel, options: ExportOptions) -> dict:
    return {"run": str(source.run), "checkpoint": source.checkpoint.name,
            "step": int(source.checkpoint.name.split("_")[1]), "task": source.task, "dtype": options.dtype}


def companions(source: RunModel) -> dict[str, Path]:
    """Exported folders an export of ``source`` carries in sub-folders of these names: an LM's
    codec (the one its token shards' manifest names), where it can be found."""
    from aurora.generation import LM, LM_CODEC_DIR, lm_codec_dir

    if source.kind is not LM:
        return {}
    try:
        codec = lm_codec_dir(source.run)
    except Exception as e:  # the shards may live elsewhere than the run: the weights are exported all the same
        print(f"aurora: warning: the LM's codec is not exported beside it ({' '.join(str(e).split())[:300]})",
              file=sys.stderr)
        return {}
    return {LM_CODEC_DIR: codec} if is_exported(codec) else {}


def copy_exported(source: Path, target: Path) -> None:
    """An exported folder's files (safetensors and JSON only) into ``target``."""
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            shutil.copyfile(path, target / path.name)


def write_safetensors(source: RunModel, folder: Path, options: ExportOptions) -> None:
    write_exported(folder, source.kind, source.config, source.model.state_dict(), options.max_shard_size)
    write_json(folder / TRAINING_CONFIG, training_config_document(source))
    write_json(folder / PROVENANCE, provenance(source, options))
    for name, path in companions(source).items():
        copy_exported(path, folder / name)


def _formats() -> dict[str, Format]:
    from aurora.release.hf import write_hf

    return {"safetensors": Format("safetensors", None, write_safetensors),
            "hf": Format("hf", ("audio_lm",), write_hf)}


FORMAT_NAMES = ("safetensors", "hf")


def export_run(run: str | Path, fmt: str, out: str | Path, step: int | None = None,
               options: ExportOptions | None = None, *, force: bool = False, trust: bool) -> RunModel:
    """Export checkpoint ``step`` (default: the latest) of ``run`` in format ``fmt`` to ``out``."""
    options = options or ExportOptions()
    formats = _formats()
    if fmt not in formats:
        raise ModelLoadError(f"--format {fmt}: unknown; formats: {', '.join(formats)}")
    if options.dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {options.dtype}: unknown; dtypes: {', '.join(DTYPES)}")
    with atomic_folder(out, replace=force) as folder:  # refuses a non-empty --out before reading the run
        source = read_run_model(run, step, DTYPES[options.dtype], trust=trust)
        chosen = formats[fmt]
        if chosen.kinds is not None and source.kind.name not in chosen.kinds:
            fitting = [f.name for f in formats.values() if f.kinds is None or source.kind.name in f.kinds]
            raise ModelLoadError(f"--format {fmt} holds {' or '.join(chosen.kinds)} models, and {run} is a "
                                 f"'{source.task}' run of a {source.kind.name}: formats for it: {', '.join(fitting)}")
        try:
            chosen.write(source, folder, options)
        except ValueError as e:
            if "shard" in str(e).lower() or "size" in str(e).lower():
                raise ModelLoadError(f"--max-shard-size {options.max_shard_size}: {e}") from None
            raise
    return source


def add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="export a run's checkpoint in a format others load")
    export.add_argument("run", type=Path, metavar="RUN", help="a training run directory or one of its checkpoints")
    export.add_argument("--step", type=int, help="the checkpoint of this step (default: the latest complete one)")
    export.add_argument("--format", required=True, choices=FORMAT_NAMES, help="safetensors (aurora's, every recipe), "
                        "hf (a transformers folder: the audio LM), dac (transformers' DacModel: the codec)")
    export.add_argument("--out", type=Path, required=True, help="the folder to write (new or empty, or --force)")
    export.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the exported weights")
    export.add_argument("--max-shard-size", default=MAX_SHARD_SIZE,
                        help="largest weights file before sharding, e.g. 5GB, 200MB")
    export.add_argument("--force", action="store_true", help="replace a non-empty --out")
    export.add_argument("--trust-checkpoint", action="store_true",
                        help="read RUN although its checkpoint files are pickles, which can run code: only for runs "
                             "you made or trust")
    export.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> None:
    try:
        source = export_run(args.run, args.format, args.out, args.step,
                            ExportOptions(args.dtype, args.max_shard_size), force=args.force,
                            trust=args.trust_checkpoint)
    except FileExistsError as e:
        raise ModelLoadError(f"--out {e}") from None
    print(f"aurora: exported {source.run} {source.checkpoint.name} ({source.task}) as {args.format} to {args.out}")

