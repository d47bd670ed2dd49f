"""``manifest.json``: what a shard set holds, and turning a shard spec into tar paths.

Every shard set (audio or tokens) carries a manifest next to its tars::

    {"schema_version": 1, "kind": "audio", "sample_rate": 16000,
     "shards": [{"name": "shard-000000.tar", "samples": 64, "seconds": 127.3}, ...],
     "num_samples": 200, "hours": 0.11, "created_by": "...", ...extra}

Token manifests add ``n_q``, ``codebook_size``, ``frame_rate`` and ``codec`` as extra keys; pair
manifests (aurora.data.pairs) add the same, and ``policy`` and ``reference``. The shard writers
record ``text_bytes_max``, the longest caption in UTF-8 bytes, which an LM recipe checks against
its model's text length before training. Latent manifests (``data_prep.tokenize --latents``) hold
``latent_dim`` (each sample is float16 ``[latent_dim, T]``), ``latent_dtype``, ``frame_rate`` and the codec.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import braceexpand

from aurora.data.config import DataError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("audio", "tokens", "pairs", "latents")
REQUIRED_KEYS = ("schema_version", "kind", "sample_rate", "shards", "num_samples", "hours")
_RECREATE = "re-create the shards with `python -m data_prep.make_shards`"


class ManifestError(DataError):
    """A manifest.json that this aurora cannot use."""


def write_manifest(out_dir: str | os.PathLike, kind: str, shards: list[dict], sample_rate: int | None,
                   **extra) -> Path:
    """Write ``out_dir/manifest.json`` atomically and return its path.

    ``shards`` lists ``{"name", "samples", "seconds"}`` per tar, names relative to ``out_dir``.
    ``sample_rate`` is None when the shards keep mixed source rates (audio, not resampled).
    """
    if kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {KINDS}, got {kind!r}")
    for shard in shards:
        if set(shard) != {"name", "samples", "seconds"} or "/" in shard["name"]:
            raise ValueError(f"each shard entry needs exactly name (a tar file name in out_dir), samples "
                             f"and seconds; got {shard}")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "sample_rate": sample_rate,
        "shards": shards,
        "num_samples": sum(s["samples"] for s in shards),
        "hours": sum(s["seconds"] for s in shards) / 3600.0,
        "created_by": "aurora: " + " ".join(sys.orig_argv),
        **extra,
    }
    path = Path(out_dir) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and validate ``directory/manifest.json``."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {directory}: point data.shards at a directory written by "
            f"data_prep.make_shards, or at a brace pattern such as {directory}/shard-{{000000..000009}}.tar"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exn:
        raise ManifestError(f"{path} is not valid JSON ({exn}): {_RECREATE}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} must hold a JSON object, not {type(manifest).__name__}: {_RECREATE}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: schema_version {version!r} is not supported by this aurora "
            f"(supports {SCHEMA_VERSION}): {_RECREATE}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks required keys {missing}: {_RECREATE}")
    if manifest["kind"] not in KINDS:
        raise ManifestError(f"{path}: kind {manifest['kind']!r} is not one of {KINDS}: {_RECREATE}")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and "/" not in s["name"]
        and isinstance(s.get("samples"), int) for s in shards
    ):
        raise ManifestError(f"{path}: 'shards' must be a list of {{name, samples, seconds}} objects, "
                            f"names being tar file names in the manifest's directory: {_RECREATE}")
    return manifest


def resolve_shards(spec: str) -> tuple[list[str], dict | None]:
    """Turn a shard spec into existing tar paths, plus the manifest when one is there.

    ``spec`` is either a directory holding ``manifest.json`` (its shards, in manifest order)
    or a brace pattern such as ``dir/shard-{000000..000099}.tar`` (a single path works too);
    the manifest of the pattern's directory is returned when it has one.
    """
    if not spec or not spec.strip():
        raise DataError("data.shards is empty: set it to a shard directory or a brace pattern")
    if os.path.isdir(spec):
        manifest = read_manifest(spec)
        urls = [os.path.join(spec, shard["name"]) for shard in manifest["shards"]]
        missing = [url for url in urls if not os.path.isfile(url)]
        if missing:
            raise FileNotFoundError(
                f"{spec}/{MANIFEST_NAME} lists {len(missing)} shard(s) that do not exist, e.g. {missing[0]}: "
                f"restore the missing tars or {_RECREATE}"
            )
        if not urls:
            raise ManifestError(f"{spec}/{MANIFEST_NAME} lists no shards: {_RECREATE}")
        return urls, manifest
    if any(char in spec for char in "*?["):
        raise DataError(
            f"shard spec {spec!r} is a glob; aurora takes a directory with {MANIFEST_NAME} "
            f"or a brace pattern such as dir/shard-{{000000..000099}}.tar"
        )
    if "{" not in spec and not os.path.exists(spec):
        raise FileNotFoundError(
            f"shard spec {spec!r} does not exist: give a shard directory (with {MANIFEST_NAME}) or a brace "
            f"pattern such as dir/shard-{{000000..000099}}.tar, e.g. made by `python -m data_prep.make_shards`"
        )
    urls = list(braceexpand.braceexpand(spec))
    parents = {os.path.dirname(url) or "." for url in urls}
    absent_dirs = sorted(d for d in parents if not os.path.isdir(d))
    if absent_dirs:
        raise FileNotFoundError(
            f"shard spec {spec!r}: directory {absent_dirs[0]} does not exist: check the path "
            f"(data.shards), or create the shards with `python -m data_prep.make_shards`"
        )
    missing = [url for url in urls if not os.path.isfile(url)]
    if len(missing) == len(urls):
        raise FileNotFoundError(
            f"shard spec {spec!r} matches no file (e.g. {missing[0]}): check the pattern's range "
            f"and zero padding against the directory's contents, or pass the directory itself"
        )
    if missing:
        raise FileNotFoundError(
            f"shard spec {spec!r}: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}: "
            f"narrow the brace range to the shards that exist"
        )
    manifest = None
    if len(parents) == 1 and os.path.isfile(os.path.join(parents.pop(), MANIFEST_NAME)):
        manifest = read_manifest(os.path.dirname(urls[0]) or ".")
    return urls, manifest
