"""Verify a shard set member by member, print its statistics, or render one sample.

    python -m tools.inspect_shards SHARDS [--workers N] [--json REPORT.json] [--max-seconds S] [--max-member-mb MB]
    python -m tools.inspect_shards SHARDS --plot KEY --png OUT.png
    python -m tools.inspect_shards SHARDS --plot-index N --png OUT.png

SHARDS is a directory holding ``manifest.json`` (as written by ``data_prep.make_shards``,
``data_prep.tokenize`` or ``data_prep.synth_tokens``) or a brace pattern such as
``DIR/shard-{000000..000009}.tar``. Every member of every shard is read and checked:

- the tar reads to its end (a truncated or corrupt tar is reported with where it failed);
- each sample is checked with the training loader's own rules (aurora.data.members, .audio,
  .tokens): a problem whose kind is a skip reason (aurora.data.skips) is a sample the loader
  skips for that reason, and the loader uses every other sample. The rules: the key is no
  absolute path and has no ``..``; the members are there, none larger than ``--max-member-mb``
  (default: data.max_member_mb's); ``KEY.json`` is a JSON object whose ``text``, when present, is a string and whose
  ``duration`` and ``frames``, when present, are positive numbers; audio: ``KEY.flac``'s header
  gives a sample rate in [1, 384000] Hz, at most 8 channels and at most ``--max-seconds``
  (default: data.max_seconds's), it has samples and every one decodes (the loader decodes only its crops, so it skips a clip damaged
  elsewhere only in the epochs whose crop meets the damage); tokens: ``KEY.codes.npy`` loads as
  int16 ``[n_q, T]``, T > 0, codes in ``[0, codebook_size)`` (n_q, codebook_size: the manifest's);
- the json's ``duration`` (and ``sample_rate``, ``channels``, ``frames``, ``frame_rate``)
  match the decoded member, to within one frame or 1 ms;
- each shard holds as many samples (and seconds) as manifest.json lists; keys are unique.

The report gives shards, samples, hours, a duration histogram, the sample rates and channel
counts seen (frame rates and codebooks for token shards), caption lengths, and every problem
found, grouped by kind with the first few examples (shard and key). ``--json`` also writes
the report, with up to 1000 examples per kind, as JSON.

``--plot`` / ``--plot-index`` (audio shards only) skip the verification and render one
sample's waveform and log-mel spectrogram to ``--png``; see tools.shard_plot.

Exit status: 0 when no problem was found, 1 when some were, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from aurora.data.audio import AudioExamples, check_flac, open_flac, read_frames
from aurora.data.config import DataConfig, DataError
from aurora.data.manifest import MANIFEST_NAME, read_manifest, resolve_shards
from aurora.data.members import caption, is_finite_number, is_positive_number, metadata, require_members
from aurora.data.skips import READ_ERROR, BadSample, SampleFailures
from aurora.data.tars import read_shard
from aurora.data.tokens import TokenExamples, load_codes

PROG = "python -m tools.inspect_shards"
SHARDS_HELP = (f"a shard directory holding {MANIFEST_NAME} (made by `python -m data_prep.make_shards`) "
               f"or a brace pattern such as DIR/shard-{{000000..000009}}.tar")

# Problem kinds beyond the loader's skip reasons (aurora.data.skips).
DURATION_MISMATCH = "duration_mismatch"
"""The json's duration (or frames) disagrees with the decoded audio (or codes)."""
METADATA_MISMATCH = "metadata_mismatch"
"""The json's sample_rate / channels / frame_rate, or the manifest's, disagree with the member,
or a token sample has no usable frame rate."""
COUNT_MISMATCH = "count_mismatch"
"""A shard holds another number of samples than manifest.json lists."""
SECONDS_MISMATCH = "seconds_mismatch"
"""A shard's decoded seconds differ from manifest.json's."""
DUPLICATE_KEY = "duplicate_key"
"""A key that more than one sample has (in one shard or across shards)."""
MISSING_SHARD = "missing_shard"
"""manifest.json lists a tar that is not there."""
UNLISTED_SHARD = "unlisted_shard"
"""A tar of a brace pattern that its directory's manifest.json does not list."""

DURATION_TOLERANCE_S = 1e-3
EXAMPLES_PRINTED = 5
EXAMPLES_IN_JSON = 1000
HISTOGRAM_BINS = 10
BAR_WIDTH = 40


class UsageError(Exception):
    """A bad argument: exit status 2 with this message."""


@dataclass
class Problem:
    kind: str
    shard: str
    key: str | None
    detail: str

    def line(self) -> str:
        return f"{self.shard}{' ' + self.key if self.key else ''}: {self.detail}"


@dataclass
class Expect:
    """What every sample of the set should look like (from manifest.json when there is one)."""
    kind: str
    sample_rate: int | None = None
    n_q: int | None = None
    codebook_size: int | None = None
    frame_rate: float | None = None
    max_seconds: float = DataConfig.max_seconds
    max_member_mb: float = DataConfig.max_member_mb


@dataclass
class SampleInfo:
    """The decoded facts of one usable sample."""
    seconds: float | None
    """None: unknown (token samples without a frame rate)."""
    rate: float | None
    """Sample rate (audio) or frame rate (tokens)."""
    channels: int
    """Channels (audio) or codebooks (tokens)."""
    text: str


@dataclass
class ShardResult:
    name: str
    samples: int = 0
    usable: int = 0
    keys: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rates: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    text_chars: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    read_failed: bool = False


# -- one sample ----------------------------------------------------------------------------------
# Whether a sample is usable is decided by the loader's own rules (aurora.data.members, .audio,
# .tokens), in the loader's order, so a problem here is a skip there with the same reason. What
# follows them here only compares the json and the manifest with what the members hold.
def check_audio(sample: dict, expect: Expect) -> tuple[SampleInfo, list[tuple[str, str]]]:
    """Verify a ``KEY.flac`` + ``KEY.json`` sample: its facts and its non-fatal problems."""
    require_members(sample, "flac", "json")
    meta = metadata(sample)
    frames, rate, channels = check_flac(sample, expect.max_seconds)
    seconds = frames / rate
    issues = []
    if "duration" in meta and abs(meta["duration"] - seconds) > max(1.0 / rate, DURATION_TOLERANCE_S):
        issues.append((DURATION_MISMATCH, f"json duration {meta['duration']:.4f} s, audio decodes to "
                                          f"{seconds:.4f} s ({frames} frames at {rate} Hz)"))
    if meta.get("sample_rate", rate) != rate:
        issues.append((METADATA_MISMATCH, f"json sample_rate {meta['sample_rate']}, the flac is {rate} Hz"))
    if meta.get("channels", channels) != channels:
        issues.append((METADATA_MISMATCH, f"json channels {meta['channels']}, the flac has {channels}"))
    if expect.sample_rate is not None and rate != expect.sample_rate:
        issues.append((METADATA_MISMATCH, f"{rate} Hz, but {MANIFEST_NAME} says {expect.sample_rate} Hz"))
    return SampleInfo(seconds, rate, channels, meta.get("text", "")), issues


def check_tokens(sample: dict, expect: Expect) -> tuple[SampleInfo, list[tuple[str, str]]]:
    """Verify a ``KEY.codes.npy`` + ``KEY.json`` sample: its facts and its non-fatal problems."""
    require_members(sample, "codes.npy", "json")
    meta = metadata(sample)
    n_q, frames = load_codes(sample, expect.n_q, expect.codebook_size).shape
    frame_rate, issues = token_frame_rate(meta, expect)
    if meta.get("frames", frames) != frames:
        issues.append((DURATION_MISMATCH, f"json frames {meta['frames']}, the codes have {frames}"))
    if frame_rate is None:
        return SampleInfo(None, None, n_q, meta.get("text", "")), issues
    seconds = frames / frame_rate
    # ``duration`` is the source audio's: the codec pads it to whole frames.
    if "duration" in meta and abs(meta["duration"] - seconds) > 1.0 / frame_rate + DURATION_TOLERANCE_S:
        issues.append((DURATION_MISMATCH, f"json duration {meta['duration']:.4f} s, the codes hold "
                                          f"{seconds:.4f} s ({frames} frames at {frame_rate:g} Hz)"))
    return SampleInfo(seconds, frame_rate, n_q, meta.get("text", "")), issues


def token_frame_rate(meta: dict, expect: Expect) -> tuple[float | None, list[tuple[str, str]]]:
    """The frame rate to measure a token sample by (the manifest's, which the loader uses, else
    the json's) and where the two disagree. The loader reads no frame rate from the json, so a
    bad or missing one is a metadata problem, not a reason to skip the sample."""
    rate = meta.get("frame_rate")
    if rate is not None and not is_positive_number(rate):
        return expect.frame_rate, [(METADATA_MISMATCH, f"json frame_rate {rate!r} is not a positive number")]
    if rate is None and expect.frame_rate is None:
        return None, [(METADATA_MISMATCH, f"no frame_rate in the json nor in {MANIFEST_NAME}: the sample's "
                                          f"seconds are unknown (re-create the shards with data_prep.tokenize)")]
    if rate is not None and expect.frame_rate is not None and rate != expect.frame_rate:
        return expect.frame_rate, [(METADATA_MISMATCH, f"json frame_rate {rate}, {MANIFEST_NAME} says "
                                                       f"{expect.frame_rate}")]
    return expect.frame_rate or rate, []


CHECKS = {"audio": check_audio, "tokens": check_tokens}
MEMBERS = {"audio": AudioExamples.members, "tokens": TokenExamples.members}
"""The members the loader reads, hence checks, per kind."""


# -- one shard -----------------------------------------------------------------------------------
def read_tar(url: str, on_error: Callable[[str], None]) -> Iterator[dict]:
    """Yield ``{"__key__", <ext>: bytes, ...}`` per readable sample of the tar at ``url``, front
    to back; where the tar cannot be read any further, ``on_error(detail)`` says where."""
    yield from read_shard(url, lambda reason, shard, detail: on_error(detail))


def verify_shard(url: str, expect: Expect, listed: dict | None) -> ShardResult:
    """Read and check every sample of one tar; ``listed`` is its manifest.json entry (None: no manifest)."""
    result = ShardResult(os.path.basename(url))
    failures = SampleFailures()

    def on_error(reason: str, shard: str, detail: str) -> None:
        if reason != READ_ERROR:  # a sample not read (too_large): the loader skips it, and reads on
            result.samples += 1
            result.problems.append(Problem(reason, result.name, None, detail))
            return
        where = f"after {result.samples} samples (last key {result.keys[-1]})" if result.keys else "at its start"
        result.read_failed = True
        result.problems.append(Problem(READ_ERROR, result.name, None, f"{where}: {detail}"))

    for sample in read_shard(url, on_error, exts=MEMBERS[expect.kind], max_bytes=round(expect.max_member_mb * 1e6)):
        key = sample["__key__"]
        result.samples += 1
        result.keys.append(key)
        try:
            info, issues = CHECKS[expect.kind](sample, expect)
        except Exception as exn:  # noqa: BLE001 - what the loader skips, as it does (aurora.data.skips)
            reason, detail = failures.reason(exn)
            result.problems.append(Problem(reason, result.name, key, detail))
            continue
        failures.succeeded()
        result.problems += [Problem(kind, result.name, key, detail) for kind, detail in issues]
        result.usable += 1
        if info.seconds is not None:
            result.seconds.append(info.seconds)
            result.rates[info.rate] += 1
        result.channels[info.channels] += 1
        result.text_chars.append(len(info.text))
    result.problems += manifest_problems(result, listed)
    return result


def manifest_problems(result: ShardResult, listed: dict | None) -> list[Problem]:
    """Where a shard disagrees with its manifest.json entry (not checked after a read error:
    that problem already says the rest of the shard is lost)."""
    if listed is None or result.read_failed:
        return []
    if result.samples != listed["samples"]:
        hint = " (truncated at a member boundary?)" if result.samples < listed["samples"] else ""
        return [Problem(COUNT_MISMATCH, result.name, None, f"the tar holds {result.samples} samples, "
                                                           f"{MANIFEST_NAME} lists {listed['samples']}{hint}")]
    seconds, expected = sum(result.seconds), listed.get("seconds")
    if (is_finite_number(expected) and len(result.seconds) == result.samples
            and abs(seconds - expected) > 5e-4 + DURATION_TOLERANCE_S * result.samples):
        return [Problem(SECONDS_MISMATCH, result.name, None,
                        f"the samples last {seconds:.3f} s, {MANIFEST_NAME} lists {expected:.3f} s")]
    return []


def _verify_job(job: tuple[str, Expect, dict | None]) -> ShardResult:
    return verify_shard(*job)


# -- the shard set -------------------------------------------------------------------------------
def resolve(spec: str) -> tuple[list[str], dict | None, list[Problem]]:
    """``(existing tar paths, manifest or None, problems)``; UsageError when there is nothing to check.
    Unlike training, tars missing from a manifest's directory are problems to report, not an error."""
    if not os.path.exists(spec) and "{" not in spec:
        raise UsageError(f"SHARDS {spec!r} does not exist: give {SHARDS_HELP}")
    try:
        if not os.path.isdir(spec):
            urls, manifest = resolve_shards(spec)
            return urls, manifest, unlisted_problems(urls, manifest)
        manifest = read_manifest(spec)
    except (FileNotFoundError, DataError) as exn:
        raise UsageError(str(exn)) from None
    if not manifest["shards"]:
        raise UsageError(f"{os.path.join(spec, MANIFEST_NAME)} lists no shards")
    urls, problems = [], []
    for shard in manifest["shards"]:
        url = os.path.join(spec, shard["name"])
        if os.path.isfile(url):
            urls.append(url)
        else:
            problems.append(Problem(MISSING_SHARD, shard["name"], None, f"listed in {MANIFEST_NAME}, not found"))
    return urls, manifest, problems


def unlisted_problems(urls: list[str], manifest: dict | None) -> list[Problem]:
    if manifest is None:
        return []
    listed = {shard["name"] for shard in manifest["shards"]}
    return [Problem(UNLISTED_SHARD, os.path.basename(url), None, f"not listed in its directory's {MANIFEST_NAME}")
            for url in urls if os.path.basename(url) not in listed]


def expectations(manifest: dict | None, urls: list[str]) -> Expect:
    if manifest is None:
        return Expect(kind=sniff_kind(urls))
    if manifest["kind"] == "tokens":
        return Expect("tokens", n_q=manifest.get("n_q"), codebook_size=manifest.get("codebook_size"),
                      frame_rate=manifest.get("frame_rate"))
    return Expect("audio", sample_rate=manifest.get("sample_rate"))


def sniff_kind(urls: list[str]) -> str:
    """``tokens`` when the first readable sample has a ``codes.npy`` member, else ``audio``."""
    for url in urls:
        for sample in read_tar(url, lambda _: None):
            return "tokens" if "codes.npy" in sample else "audio"
    return "audio"


def verify_all(urls: list[str], manifest: dict | None, expect: Expect, workers: int) -> list[ShardResult]:
    """Verify the shards (in ``workers`` processes when more than 1), in order, with a progress bar."""
    listed = {shard["name"]: shard for shard in manifest["shards"]} if manifest else {}
    jobs = [(url, expect, listed.get(os.path.basename(url)) if manifest else None) for url in urls]
    bar = tqdm(total=len(jobs), desc="shards", unit="shard", dynamic_ncols=True)
    try:
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.Pool(min(workers, len(jobs))) as pool:
                return list(_advancing(pool.imap(_verify_job, jobs), bar))
        return list(_advancing(map(_verify_job, jobs), bar))
    finally:
        bar.close()


def _advancing(results: Iterator[ShardResult], bar: tqdm) -> Iterator[ShardResult]:
    for result in results:
        bar.update()
        yield result


# -- the report ----------------------------------------------------------------------------------
def duplicate_key_problems(results: list[ShardResult]) -> list[Problem]:
    where = defaultdict(list)
    for result in results:
        for key in result.keys:
            where[key].append(result.name)
    return [Problem(DUPLICATE_KEY, shards[0], key, f"key appears {len(shards)} times, in {sorted(set(shards))}")
            for key, shards in where.items() if len(shards) > 1]


def histogram(values: list[float], bins: int = HISTOGRAM_BINS) -> list[dict]:
    """``[{"lo", "hi", "count"}]`` over the range of ``values`` (one bin when they are all equal)."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [{"lo": lo, "hi": hi, "count": len(values)}]
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return [{"lo": float(a), "hi": float(b), "count": int(n)} for a, b, n in zip(edges[:-1], edges[1:], counts)]


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


def manifest_totals(spec: str, manifest: dict | None, results: list[ShardResult]) -> dict | None:
    """What manifest.json lists for the shards the spec names: all of them for a directory,
    those the pattern matches for a brace pattern."""
    if manifest is None:
        return None
    names = {result.name for result in results}
    entries = [e for e in manifest["shards"] if os.path.isdir(spec) or e["name"] in names]
    return {"num_samples": sum(e["samples"] for e in entries),
            "hours": sum(e.get("seconds", 0.0) for e in entries) / 3600.0}


def build_report(spec: str, manifest: dict | None, kind: str, results: list[ShardResult],
                 problems: list[Problem]) -> dict:
    seconds = [s for result in results for s in result.seconds]
    text_chars = [n for result in results for n in result.text_chars]
    rates, channels = Counter(), Counter()
    for result in results:
        rates.update(result.rates)
        channels.update(result.channels)
    by_kind = defaultdict(list)
    for problem in problems:
        by_kind[problem.kind].append(problem)
    rate_name, channel_name = ("sample_rates", "channels") if kind == "audio" else ("frame_rates", "codebooks")
    return {
        "shards": spec,
        "kind": kind,
        "num_shards": len(results),
        "samples": sum(result.samples for result in results),
        "usable_samples": sum(result.usable for result in results),
        "hours": sum(seconds) / 3600.0,
        "seconds": summary(seconds),
        "manifest": manifest_totals(spec, manifest, results),
        "duration_histogram": histogram(seconds),
        rate_name: {f"{rate:g}": n for rate, n in sorted(rates.items())},
        channel_name: {str(c): n for c, n in sorted(channels.items())},
        "text_chars": None if not text_chars else {**summary(text_chars), "empty": text_chars.count(0)},
        "clean": not problems,
        "problem_counts": {k: len(v) for k, v in by_kind.items()},
        "problems": {k: [asdict(p) for p in v[:EXAMPLES_IN_JSON]] for k, v in by_kind.items()},
    }


def format_report(report: dict) -> str:
    lines = [f"{report['shards']}: {dict(audio='audio', tokens='token')[report['kind']]} shards"]
    lines += [f"  {name:<13} {value}" for name, value in overview(report)]
    if report["duration_histogram"]:
        lines += ["", "duration histogram (s)"] + histogram_lines(report["duration_histogram"])
    lines += [""] + problem_lines(report)
    return "\n".join(lines)


def overview(report: dict) -> list[tuple[str, str]]:
    manifest = report["manifest"]
    rows = [("shards", str(report["num_shards"])),
            ("samples", f"{report['samples']} ({report['usable_samples']} usable)"
                        + (f"; manifest: {manifest['num_samples']}" if manifest else "")),
            ("hours", f"{report['hours']:.4f} ({report['hours'] * 3600:.2f} s)"
                      + (f"; manifest: {manifest['hours']:.4f}" if manifest else ""))]
    if report["seconds"]:
        s = report["seconds"]
        rows.append(("duration", f"min {s['min']:.3f} s, mean {s['mean']:.3f} s, max {s['max']:.3f} s"))
    for name, unit in (("sample_rates", " Hz"), ("frame_rates", " Hz"), ("channels", ""), ("codebooks", "")):
        if name in report:
            rows.append((name.replace("_", " "), ", ".join(f"{k}{unit} ({n})" for k, n in report[name].items())
                         or "-"))
    if report["text_chars"]:
        t = report["text_chars"]
        rows.append(("text chars", f"min {t['min']}, mean {t['mean']:.1f}, max {t['max']}; empty: {t['empty']}"))
    return rows


def histogram_lines(bins: list[dict]) -> list[str]:
    peak = max(b["count"] for b in bins) or 1
    return [f"  {b['lo']:8.3f} - {b['hi']:8.3f} |{'#' * round(BAR_WIDTH * b['count'] / peak):<{BAR_WIDTH}}| "
            f"{b['count']}" for b in bins]


def problem_lines(report: dict) -> list[str]:
    counts = report["problem_counts"]
    if not counts:
        return ["problems: none: every member of every shard checks out"]
    lines = [f"problems: {sum(counts.values())} in {len(counts)} kind(s)"]
    for kind, count in counts.items():
        lines.append(f"  {kind} ({count})")
        examples = [Problem(**p) for p in report["problems"][kind][:EXAMPLES_PRINTED]]
        lines += [f"    {problem.line()}" for problem in examples]
        if count > len(examples):
            lines.append(f"    ... and {count - len(examples)} more")
    return lines


# -- plotting ------------------------------------------------------------------------------------
def find_sample(urls: list[str], key: str | None, index: int | None) -> dict:
    """The raw sample with ``key``, or the ``index``-th of the set (in shard order)."""
    position = 0
    for url in urls:
        for sample in read_tar(url, lambda _: None):
            if sample["__key__"] == key or (key is None and position == index):
                return sample
            position += 1
    wanted = f"key {key!r}" if key is not None else f"index {index} (the set holds {position} samples)"
    raise UsageError(f"no sample with {wanted} in the shards; keys are the tar member names without "
                     f"their extensions, e.g. {_first_key(urls)!r}")


def _first_key(urls: list[str]) -> str | None:
    for url in urls:
        for sample in read_tar(url, lambda _: None):
            return sample["__key__"]
    return None


def plot(urls: list[str], expect: Expect, key: str | None, index: int | None, png: str) -> str:
    from tools.shard_plot import plot_sample

    if expect.kind != "audio":
        raise UsageError("--plot renders audio samples, and these are token shards (decode them with their codec)")
    sample = find_sample(urls, key, index)
    try:
        require_members(sample, "flac", "json")
        text = caption(sample)
        with open_flac(sample, expect.max_seconds) as f:
            audio, rate = read_frames(f, sample["__key__"], 0, f.frames), f.samplerate
    except BadSample as exn:
        raise UsageError(f"cannot plot {sample['__key__']}: {exn}") from None
    return str(plot_sample(audio, rate, sample["__key__"], text, png))


# -- command line --------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     epilog="exit status: 0 clean, 1 problems found, 2 bad argument")
    parser.add_argument("shards", metavar="SHARDS", help=SHARDS_HELP)
    parser.add_argument("--workers", metavar="N", type=int, default=1, help="verify shards in N processes (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--max-seconds", metavar="S", type=float, default=DataConfig.max_seconds,
                        help="report clips longer than this by their header as too_long, as data.max_seconds=S "
                             "skips them (default %(default)g)")
    parser.add_argument("--max-member-mb", metavar="MB", type=float, default=DataConfig.max_member_mb,
                        help="report members larger than this as too_large, as data.max_member_mb=MB skips them "
                             "(default %(default)g)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--plot", metavar="KEY", help="render the sample KEY to --png instead of verifying")
    which.add_argument("--plot-index", metavar="N", type=int, help="render the N-th sample (from 0) to --png")
    parser.add_argument("--png", metavar="OUT.png", help="where --plot / --plot-index write the figure")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    for name in ("max_seconds", "max_member_mb"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    plotting = args.plot is not None or args.plot_index is not None
    if plotting and not args.png:
        parser.error("--plot / --plot-index need --png OUT.png")
    if args.png and not plotting:
        parser.error("--png needs --plot KEY or --plot-index N")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its directory does not exist")
    if args.plot_index is not None and args.plot_index < 0:
        parser.error(f"--plot-index must be 0 or more, got {args.plot_index}")
    args.parser = parser
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 clean, 1 problems); bad arguments exit 2."""
    args = parse_args(argv)
    try:
        urls, manifest, problems = resolve(args.shards)
        expect = expectations(manifest, urls)
        expect.max_seconds, expect.max_member_mb = args.max_seconds, args.max_member_mb
        if args.plot is not None or args.plot_index is not None:
            print(f"wrote {plot(urls, expect, args.plot, args.plot_index, args.png)}")
            return 0
    except UsageError as exn:
        args.parser.error(str(exn))
    results = verify_all(urls, manifest, expect, args.workers)
    problems += [p for result in results for p in result.problems] + duplicate_key_problems(results)
    report = build_report(args.shards, manifest, expect.kind, results, problems)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0 if report["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
