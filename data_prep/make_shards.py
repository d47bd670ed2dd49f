"""Pack a corpus into WebDataset audio shards.

    python -m data_prep.make_shards --input PATH --out SHARDS [--workers N]
        [--sample-rate HZ] [--channels 1|2] [--min-seconds S] [--max-seconds S] [--too-long cut|drop]
        [--max-text-bytes N]
        [--shard-mb MB] [--samples-per-shard N] [--layout auto|jsonl|ljspeech|libritts|folder] [--corpus NAME]

``--input`` is what users have (the layout is recognised by itself, see data_prep.layouts): a
JSON-lines manifest (``--manifest FILE`` is the same as ``--input FILE``), an LJSpeech folder
(metadata.csv + wavs/), a LibriTTS tree (SPEAKER/CHAPTER/ID.wav + ID.normalized.txt) or a plain
folder of audio files. Each clip becomes ``KEY.flac`` + ``KEY.json`` in
``SHARDS/shard-000000.tar``, ...; the json holds ``text``, ``duration``, ``sample_rate``,
``channels``, ``source``, ``corpus``, ``path``, ``speaker``/``language`` when known and the
listing's other fields (see data_prep.clips). Clips are resampled to ``--sample-rate`` (default:
each keeps its own), downmixed to mono or made stereo (``--channels``), cut into pieces at quiet
points when longer than ``--max-seconds`` (data_prep.segment; ``KEY_segNNN``) and dropped when
shorter than ``--min-seconds``. A shard is closed when the next clip would take it past
``--shard-mb`` megabytes (or ``--samples-per-shard`` clips).

A clip that cannot be used (missing, undecodable, too short, its text longer than
``--max-text-bytes``, a bad listing line) is skipped
and listed with its reason and error in ``SHARDS/skipped.jsonl``; the job goes on.
``SHARDS/manifest.json`` describes the result (see aurora.data.manifest) and adds ``clips``,
``skipped`` and ``skipped_by_reason``.

The same input gives byte-identical shards, whatever ``--workers``. An interrupted run is
resumed by running the same command again (data_prep.shard_writer): finished shards are kept,
the rest is rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from functools import partial
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from aurora.data.manifest import write_manifest
from data_prep import layouts
from data_prep.clips import ClipOptions, load_entry, worker_died
from data_prep.layouts import LAYOUTS
from data_prep.parallel import ordered_map
from data_prep.shard_writer import SKIPPED_NAME, ResumeError, ShardWriter

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep.make_shards", description=__doc__.split("\n\n")[0])
    source = parser.add_argument_group("input")
    source.add_argument("--input", type=Path, metavar="PATH", help="the corpus: a .jsonl/.json manifest, an LJSpeech folder, "
                                                   "a LibriTTS tree or a folder of audio files")
    source.add_argument("--manifest", type=Path, metavar="FILE", help="a JSON-lines manifest (same as --input FILE)")
    source.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS), help="how --input is laid out (default: auto, recognised by itself)")
    source.add_argument("--corpus", default=None, metavar="NAME",
                        help="corpus name stored as 'corpus' (and as 'source' where the listing names none); "
                             "default: the input's directory name")
    parser.add_argument("--out", required=True, type=Path, metavar="SHARDS",
                        help="output directory for the shards; run the same command again to resume")
    audio = parser.add_argument_group("audio")
    audio.add_argument("--sample-rate", type=int, default=None, metavar="HZ",
                       help="resample every clip to this rate (default: keep each source's rate)")
    audio.add_argument("--channels", type=int, default=1, choices=(1, 2),
                       help="1: average all channels to mono; 2: keep stereo, mono duplicated to 2 channels (default: 1)")
    audio.add_argument("--min-seconds", type=float, default=0.1, metavar="S",
                       help="drop clips (and pieces of cut recordings) shorter than this, as too_short (default: 0.1)")
    audio.add_argument("--max-seconds", type=float, default=30.0, metavar="S",
                       help="cut longer recordings into pieces at quiet points, or drop them with --too-long drop "
                            "(default: 30)")
    audio.add_argument("--too-long", default="cut", choices=("cut", "drop"),
                       help="what to do with recordings longer than --max-seconds (default: cut)")
    parser.add_argument("--max-text-bytes", type=int, default=None, metavar="N",
                        help="skip clips whose text is longer than N UTF-8 bytes, as long_text: an audio LM with "
                             "model.max_text_len=L reads L - 2 (default: keep any; the manifest records the longest)")
    output = parser.add_argument_group("shards")
    output.add_argument("--shard-mb", type=float, default=256.0, metavar="MB",
                        help="close a shard when the next clip would take it past this many megabytes (10^6 bytes; "
                             "default: 256)")
    output.add_argument("--samples-per-shard", type=int, default=None, metavar="N",
                        help="also close a shard at this many clips (default: no limit)")
    output.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes decoding and encoding clips; the shards do not depend on it (default: 1)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve --manifest into --input, and reject bad values with parser.error (exit code 2)."""
    if args.input is not None and args.manifest is not None:
        parser.error("give the corpus once: --input PATH (--manifest FILE is the same as --input FILE)")
    if args.manifest is not None:
        if not args.manifest.is_file():
            parser.error(f"--manifest {args.manifest} does not exist (e.g. DIR/metadata.jsonl from data_prep.synth)")
        if args.layout not in ("auto", "jsonl"):
            parser.error(f"--manifest is a JSON-lines manifest; it cannot have --layout {args.layout}")
        args.input, args.layout = args.manifest, "jsonl"
    if args.input is None:
        parser.error("the corpus is required: --input PATH (a .jsonl manifest, an LJSpeech folder, a LibriTTS "
                     "tree or a folder of audio files)")
    if not args.input.exists():
        parser.error(f"--input {args.input} does not exist")
    if args.sample_rate is not None and args.sample_rate < 1:
        parser.error(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
    if not args.min_seconds >= 0:
        parser.error(f"--min-seconds must be >= 0, got {args.min_seconds}")
    if not args.max_seconds > 0:
        parser.error(f"--max-seconds must be > 0, got {args.max_seconds}")
    if args.min_seconds >= args.max_seconds:
        parser.error(f"--min-seconds ({args.min_seconds}) must be less than --max-seconds ({args.max_seconds})")
    if not args.shard_mb > 0:
        parser.error(f"--shard-mb must be > 0, got {args.shard_mb}")
    if args.samples_per_shard is not None and args.samples_per_shard < 1:
        parser.error(f"--samples-per-shard must be at least 1, got {args.samples_per_shard}")
    if args.max_text_bytes is not None and args.max_text_bytes < 0:
        parser.error(f"--max-text-bytes must be >= 0, got {args.max_text_bytes}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a directory")


def fingerprint(args: argparse.Namespace, corpus: layouts.Corpus) -> dict:
    """What makes the output what it is: the settings and a digest of the input listing."""
    settings = {"input": str(args.input.resolve()), "layout": corpus.layout, "corpus": corpus.name,
                "sample_rate": args.sample_rate, "channels": args.channels, "min_seconds": args.min_seconds,
                "max_seconds": args.max_seconds, "too_long": args.too_long, "max_text_bytes": args.max_text_bytes,
                "shard_mb": args.shard_mb, "samples_per_shard": args.samples_per_shard}
    digest = hashlib.sha256()
    for entry in corpus.entries:
        digest.update(json.dumps(entry, sort_keys=True).encode("utf-8") + b"\n")
    return {"settings": settings, "listing": digest.hexdigest()}


def write(entries: list[dict], results: Iterable[tuple[list[dict], list[dict]]], writer: ShardWriter,
          total: int) -> None:
    """Feed each entry's samples and skips to the writer, from the writer's resume position on."""
    start = writer.position
    with tqdm(total=total, initial=start.entry, unit="file", desc="make_shards", mininterval=1.0) as bar:
        for entry, (samples, skips) in zip(entries, results):
            first = start.sample if entry["index"] == start.entry else 0
            for number in range(first, len(samples)):
                writer.add(samples[number], entry["index"], number)
            writer.skip(skips)
            bar.update(1)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        corpus = layouts.read_corpus(args.input, args.layout, args.corpus)
    except (layouts.LayoutError, OSError, UnicodeDecodeError) as exn:
        parser.error(str(exn))
    options = ClipOptions(args.sample_rate, args.channels, args.min_seconds, args.max_seconds, args.too_long,
                          corpus.name, args.max_text_bytes)
    try:
        writer = ShardWriter(args.out, fingerprint(args, corpus), round(args.shard_mb * 1e6), args.samples_per_shard)
    except ResumeError as exn:
        parser.error(str(exn))
    total = len(corpus.entries)
    start = writer.position
    if writer.resumed:
        print(f"make_shards: resuming in {args.out}: {len(writer.totals.shards)} finished shard(s) kept, going on "
              f"from input entry {start.entry + 1} of {total}", file=sys.stderr)
    else:
        print(f"make_shards: {args.input}: {corpus.layout} layout, {total} entries", file=sys.stderr)
    todo = corpus.entries[start.entry:]
    results = ordered_map(partial(load_entry, options=options), todo, args.workers, on_crash=worker_died,
                          preload=("data_prep.clips",))
    try:
        write(todo, results, writer, total)
        totals = writer.finish(total)
    finally:
        results.close()  # stops the worker pool
        writer.close()

    skipped = dict(sorted(totals.skipped_by_reason.items()))
    listed = args.out / SKIPPED_NAME
    if not totals.shards:
        writer.forget()
        sys.exit(f"make_shards: none of the {total} clips could be read or kept ({_reasons(skipped)}): see {listed}")
    clips = sum(shard["samples"] for shard in totals.shards)
    rates = totals.sample_rates
    write_manifest(args.out, "audio", totals.shards, next(iter(rates)) if len(rates) == 1 else None,
                   clips=clips, skipped=sum(skipped.values()), skipped_by_reason=skipped, layout=corpus.layout,
                   corpus=corpus.name, channels=args.channels, text_bytes_max=totals.text_bytes_max)
    writer.forget()
    hours = sum(shard["seconds"] for shard in totals.shards) / 3600
    print(f"wrote {clips} clips ({hours:.3f} hours) in {len(totals.shards)} shards to {args.out}"
          + (f"; skipped {sum(skipped.values())} ({_reasons(skipped)}), listed in {listed}" if skipped else ""))


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "nothing skipped"


if __name__ == "__main__":
    main()
