"""Pack a corpus into WebDataset audio shards.

    python -m data_prep.make_shards --manifest DIR/metadata.jsonl --out SHARDS
                                    [--samples-per-shard 64] [--sample-rate R]

The manifest is JSON lines: ``path`` (relative to the manifest's directory, or absolute) and
optionally ``text``, ``source`` and any other fields. Each clip becomes ``KEY.flac`` +
``KEY.json`` in ``SHARDS/shard-000000.tar``, ...; the json holds ``text``, ``duration``,
``sample_rate``, ``source``, ``path`` and the manifest's other fields. FLAC sources are stored
as they are unless ``--sample-rate`` asks for resampling; others are encoded to FLAC.

A clip that cannot be used (missing, undecodable, empty, a bad manifest line) is skipped and
listed with its error in ``SHARDS/skipped.jsonl``; the job goes on. ``SHARDS/manifest.json``
describes the result (see aurora.data.manifest).

The job is three steps — read the corpus listing (``read_listing``), turn one entry into a
sample (``load_clip``, a pure function), write samples into shards (``write_shards``) — so
other corpus layouts, segmenting and parallel workers can replace one step each.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import webdataset as wds
from tqdm import tqdm

from aurora.data.manifest import MANIFEST_NAME, write_manifest

SHARD_PATTERN = "shard-%06d.tar"
SKIPPED_NAME = "skipped.jsonl"
TAR_MTIME = 0.0
"""Member timestamp in the tars, fixed so that the same input gives byte-identical shards."""
HIGH_RES_SUBTYPES = {"PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
"""Source subtypes re-encoded as 24-bit FLAC; everything else becomes 16-bit."""


class ClipError(Exception):
    """An entry that cannot become a sample; the message says why."""


def read_listing(manifest: Path) -> list[tuple[int, dict | ClipError]]:
    """``(line number, entry)`` per non-blank line of a JSON-lines manifest; a bad line gives a
    ClipError in place of its entry."""
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exn:
            entries.append((number, ClipError(f"not valid JSON: {exn}")))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            entries.append((number, ClipError("not a JSON object with a string 'path'")))
            continue
        entries.append((number, entry))
    return entries


def make_key(path: str) -> str:
    """A WebDataset key from a clip path: no extension, no dots, separators as '__'."""
    stem = os.path.splitext(path.lstrip("/"))[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem.replace("/", "__"))


def load_clip(entry: dict, root: Path, sample_rate: int | None, default_source: str) -> dict:
    """The sample ``{"__key__", "flac": bytes, "json": dict}`` for one manifest entry."""
    path = root / entry["path"]
    if not isinstance(entry.get("text", ""), str):
        raise ClipError(f"{entry['path']}: 'text' must be a string, got {entry['text']!r}")
    if not path.is_file():
        raise ClipError(f"{path}: file not found")
    try:
        info = sf.info(path)
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError) as exn:
        raise ClipError(f"{path}: cannot decode audio: {exn}") from None
    if len(audio) == 0:
        raise ClipError(f"{path}: no audio samples")
    if info.format == "FLAC" and sample_rate in (None, rate):
        flac = path.read_bytes()
    else:
        if sample_rate not in (None, rate):
            audio = AF.resample(torch.from_numpy(audio.T), rate, sample_rate).T.numpy()
            rate = sample_rate
        flac = encode_flac(audio, rate, "PCM_24" if info.subtype in HIGH_RES_SUBTYPES else "PCM_16")
    extra = {k: v for k, v in entry.items() if k not in ("text", "duration", "sample_rate", "source", "path")}
    meta = {"text": entry.get("text", ""), "duration": len(audio) / rate, "sample_rate": rate,
            "source": entry.get("source", default_source), "path": entry["path"], **extra}
    return {"__key__": make_key(entry["path"]), "flac": flac, "json": meta}


def encode_flac(audio: np.ndarray, sample_rate: int, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype=subtype)
    return buffer.getvalue()


def write_shards(samples: Iterable[dict], out_dir: Path, samples_per_shard: int) -> tuple[list[dict], set[int]]:
    """Write samples into ``out_dir/shard-NNNNNN.tar``; return the manifest's shard entries and
    the sample rates met."""
    samples = iter(samples)
    first = next(samples, None)
    if first is None:  # no empty shard-000000.tar
        return [], set()
    stats: dict[str, dict] = {}
    keys: set[str] = set()
    rates: set[int] = set()
    with wds.ShardWriter(str(out_dir / SHARD_PATTERN), maxcount=samples_per_shard, verbose=0,
                         mtime=TAR_MTIME) as writer:
        for sample in itertools.chain([first], samples):
            if sample["__key__"] in keys:  # distinct paths that sanitise alike
                digest = hashlib.sha1(sample["json"]["path"].encode()).hexdigest()[:8]
                sample["__key__"] = f"{sample['__key__']}_{digest}"
            keys.add(sample["__key__"])
            writer.write(sample)
            shard = stats.setdefault(writer.fname, {"name": os.path.basename(writer.fname), "samples": 0,
                                                    "seconds": 0.0})
            shard["samples"] += 1
            shard["seconds"] += sample["json"]["duration"]
            rates.add(sample["json"]["sample_rate"])
    return [{**shard, "seconds": round(shard["seconds"], 3)} for shard in stats.values()], rates


def usable_samples(entries: list[tuple[int, dict | ClipError]], root: Path, sample_rate: int | None,
                   skipped: list[dict]) -> Iterator[dict]:
    """The samples of the entries that load; the others go to ``skipped`` with their error."""
    for number, entry in tqdm(entries, desc="shards", unit="clip"):
        if isinstance(entry, ClipError):
            skipped.append({"line": number, "path": None, "error": str(entry)})
            continue
        try:
            sample = load_clip(entry, root, sample_rate, default_source=root.name)
        except ClipError as exn:
            skipped.append({"line": number, "path": entry["path"], "error": str(exn)})
            continue
        yield sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.make_shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path, help="JSON-lines corpus listing")
    parser.add_argument("--out", required=True, type=Path, help="output directory for the shards")
    parser.add_argument("--samples-per-shard", type=int, default=64, help="samples per tar (default 64)")
    parser.add_argument("--sample-rate", type=int, default=None, help="resample every clip to this rate (Hz)")
    args = parser.parse_args(argv)
    if not args.manifest.is_file():
        parser.error(f"--manifest {args.manifest} does not exist (e.g. DIR/metadata.jsonl from data_prep.synth)")
    if args.samples_per_shard < 1:
        parser.error(f"--samples-per-shard must be at least 1, got {args.samples_per_shard}")
    if args.sample_rate is not None and args.sample_rate < 1:
        parser.error(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
    if (args.out / MANIFEST_NAME).exists() or any(args.out.glob("shard-*.tar")):
        parser.error(f"--out {args.out} already holds shards: choose a new directory or delete them first")
    args.out.mkdir(parents=True, exist_ok=True)

    entries = read_listing(args.manifest)
    skipped: list[dict] = []
    shards, rates = write_shards(usable_samples(entries, args.manifest.parent, args.sample_rate, skipped),
                                 args.out, args.samples_per_shard)
    (args.out / SKIPPED_NAME).write_text("".join(json.dumps(s) + "\n" for s in skipped))
    if not shards:
        sys.exit(f"make_shards: none of the {len(entries)} clips could be read: see {args.out / SKIPPED_NAME}")
    write_manifest(args.out, "audio", shards, rates.pop() if len(rates) == 1 else None, skipped=len(skipped))
    samples = sum(shard["samples"] for shard in shards)
    print(f"wrote {samples} samples in {len(shards)} shards to {args.out}"
          + (f"; skipped {len(skipped)} clip(s), listed in {args.out / SKIPPED_NAME}" if skipped else ""))


if __name__ == "__main__":
    main()
