"""Audio delivered per second by aurora's data loader, against the decoding limit and a naive
loader, measured in one run; plus the padding that duration bucketing saves.

The corpus: 24 kHz mono clips whose durations follow a log-normal law like read speech
(median 5 s, sigma 0.6 in log space, clipped to [1, 20] s: mean ~6 s, 80% between 2.3 and
11 s, ~1% at the 20 s cap), each a procedural tone, chord, chirp, noise burst or hit train
(data_prep.synth) over a low white-noise floor, so that FLAC compresses it about as much as
recorded speech (~60% of raw PCM), not like silence. It is stored twice: as 16-bit FLAC in
WebDataset tars (``KEY.flac`` + ``KEY.json`` with ``text`` and ``duration``, 25 clips a tar,
manifest.json), and as one 16-bit WAV file per clip. It is cached under ``--data-dir`` by its
parameters, so a re-run skips generation. Every file is read once before timing: all methods
read from a warm page cache (as for a corpus that fits in RAM), unless ``--cold`` evicts the
corpus from the page cache before each measurement and after a loader's warm-up (as for a
first epoch, or a corpus larger than RAM; the disk's own speed then counts).

Throughput is seconds of audio delivered per wall-clock second (x real time) per worker, i.e.
divided by W, the number of worker processes:

  (a)  the limit: W processes, each taking a contiguous run of clips of equal seconds, read
       their tars front to back (tarfile) and decode every FLAC member completely with
       soundfile; nothing else;
  (b)  aurora: ``build_loader`` with ``batching=dynamic`` (duration buckets of
       ``--bucket-width``, up to ``--max-seconds-per-batch`` padded seconds a batch,
       ``segment_seconds`` = the longest clip so nothing is cropped), ``num_workers=W``;
  (b') the same with ``batching=fixed`` (``--batch-size`` clips, each padded to 20 s);
  (c)  naive: a map-style Dataset whose ``__getitem__`` reads one WAV file with soundfile, a
       DataLoader with W workers, a random sampler, ``--batch-size`` and a pad-to-longest
       collate.

Loaders count the valid samples (``lengths``) of their batches. Each first delivers
``--warmup`` epochs of audio (worker start-up, filling the shuffle buffer and the buckets),
then one epoch more: the *steady* rate is that epoch over its wall time; the rate *incl.
start-up* is all audio over the time from ``iter()``. Each measurement is repeated
``--repeats`` times, methods interleaved (in a rotating order) so machine noise hits all
alike; medians are printed, with the ratios of steady rates (b)/(a) (target >= 0.8) and
(b)/(c) (target >= 2). Padding, 1 - valid samples / (batch size x padded length) over the
steady epoch, is printed for (b), (b') and (c) (target for (b): <= 10%).

    python -m tools.bench.data_throughput [--hours 0.5] [--workers 1 2] [--repeats 5] [--cold]
                                          [--json OUT]

The default corpus (0.5 h) keeps a run to a few minutes on 2 cores; the issue's reference
run uses 2 hours of audio: ``--hours 2``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, RandomSampler

from aurora.data import DataConfig, build_loader
from aurora.data.manifest import read_manifest, write_manifest
from data_prep import synth

SAMPLE_RATE = 24000
MEDIAN_SECONDS = 5.0
LOG_SIGMA = 0.6
SHORTEST_SECONDS = 1.0
LONGEST_SECONDS = 20.0
NOISE_FLOOR = (0.001, 0.004)
"""Range of the white noise floor's standard deviation (full scale 1)."""
CLIPS_PER_SHARD = 25
CORPUS_VERSION = 1
"""Bump when the generated corpus changes, so that stale caches are not reused."""
METHODS = {"a": "(a)  soundfile decode, tars in order", "b": "(b)  aurora, dynamic batching",
           "b'": "(b') aurora, fixed batching", "c": "(c)  naive per-file WAV Dataset"}
TARGETS = {"b/a": 0.8, "b/c": 2.0}
PADDING_TARGET = 0.10


# -- corpus -----------------------------------------------------------------------------------
@dataclass
class Corpus:
    root: Path
    seconds: list[float]
    """Duration of clip i."""
    flac_bytes: int

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def tars(self) -> list[Path]:
        return [self.shards / s["name"] for s in read_manifest(self.shards)["shards"]]

    @property
    def wavs(self) -> list[Path]:
        return [self.root / "wav" / f"{i:06d}.wav" for i in range(len(self.seconds))]

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds)


def clip_durations(hours: float, seed: int) -> list[float]:
    """Log-normal clip lengths (whole samples) until they add up to ``hours``."""
    rng = np.random.default_rng(seed)
    durations, total = [], 0.0
    while total < hours * 3600:
        seconds = float(np.clip(rng.lognormal(math.log(MEDIAN_SECONDS), LOG_SIGMA), SHORTEST_SECONDS, LONGEST_SECONDS))
        durations.append(round(seconds * SAMPLE_RATE) / SAMPLE_RATE)
        total += durations[-1]
    return durations


def render_clip(job: tuple[int, int, float, Path]) -> tuple[bytes, str]:
    """Clip ``index``: writes its WAV file, returns its FLAC bytes and caption."""
    seed, index, seconds, wav_dir = job
    rng = np.random.default_rng([seed, index])
    n = round(seconds * SAMPLE_RATE)
    params = synth.random_params(str(rng.choice(synth.KINDS)), rng, seconds)
    noise = rng.uniform(*NOISE_FLOOR) * rng.standard_normal(n)
    audio = np.clip(synth.render(params, n, SAMPLE_RATE) + noise, -1.0, 1.0)
    sf.write(wav_dir / f"{index:06d}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    flac = io.BytesIO()
    sf.write(flac, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return flac.getvalue(), synth.caption(params)


def write_corpus(out: Path, durations: list[float], seed: int) -> None:
    """The tars + manifest (with the FLAC bytes) under ``out/shards``, the WAVs under ``out/wav``."""
    (out / "shards").mkdir(parents=True)
    (out / "wav").mkdir()
    jobs = [(seed, i, seconds, out / "wav") for i, seconds in enumerate(durations)]
    # mtime=0: plain ustar headers, as data_prep.make_shards writes (a float mtime adds a pax header per member).
    sink = wds.ShardWriter(str(out / "shards" / "shard-%06d.tar"), maxcount=CLIPS_PER_SHARD, verbose=0, mtime=0)
    flac_bytes = 0
    with multiprocessing.Pool(os.cpu_count()) as pool, sink:
        for i, (flac, text) in enumerate(pool.imap(render_clip, jobs, chunksize=4)):
            meta = {"text": text, "duration": durations[i]}
            sink.write({"__key__": f"{i:06d}", "flac": flac, "json": json.dumps(meta).encode()})
            flac_bytes += len(flac)
    shards = [{"name": f"shard-{k:06d}.tar", "samples": len(durations[start:start + CLIPS_PER_SHARD]),
               "seconds": sum(durations[start:start + CLIPS_PER_SHARD])}
              for k, start in enumerate(range(0, len(durations), CLIPS_PER_SHARD))]
    write_manifest(out / "shards", "audio", shards, SAMPLE_RATE, flac_bytes=flac_bytes)


def corpus(data_dir: Path, hours: float, seed: int) -> Corpus:
    """The cached corpus for these parameters, generated first if it is not there."""
    root = data_dir / f"corpus-v{CORPUS_VERSION}-{hours:g}h-{SAMPLE_RATE}hz-seed{seed}"
    durations = clip_durations(hours, seed)
    if not root.is_dir():
        print(f"generating {hours:g} h of audio ({len(durations)} clips) in {root} ...", flush=True)
        started = time.perf_counter()
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write_corpus(partial, durations, seed)
        os.replace(partial, root)
        print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)
    return Corpus(root, durations, read_manifest(root / "shards")["flac_bytes"])


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


def evict_page_cache(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (no root needed: they are clean pages)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- measurements -----------------------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    """Audio delivered (valid samples) in all, in seconds."""
    wall: float
    """From the start (``iter()`` for loaders) to the last batch."""
    steady_seconds: float
    """Audio delivered in the steady window: the batches after the warm-up."""
    steady_wall: float
    steady_padded: float
    """Batch size x padded length, summed over the steady window's batches, in seconds."""

    @property
    def steady_rate(self) -> float:
        return self.steady_seconds / self.steady_wall

    @property
    def startup_rate(self) -> float:
        return self.seconds / self.wall

    @property
    def padding(self) -> float:
        return 1.0 - self.steady_seconds / self.steady_padded


def decode_clips(tars: list[Path], start: int, stop: int) -> int:
    """Decode FLAC members ``start`` to ``stop - 1`` (numbered across the tars) completely,
    reading their tars front to back; the number of samples."""
    frames = 0
    for t in range(start // CLIPS_PER_SHARD, math.ceil(stop / CLIPS_PER_SHARD)):
        with tarfile.open(tars[t], mode="r:") as tar:
            number = t * CLIPS_PER_SHARD
            for member in tar:
                if member.name.endswith(".flac"):
                    if start <= number < stop:
                        frames += len(sf.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32")[0])
                    number += 1
    return frames


def equal_shares(seconds: list[float], parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous runs of clips of about equal seconds."""
    ends = np.cumsum(seconds)
    cuts = [0, *(int(np.searchsorted(ends, ends[-1] * k / parts)) for k in range(1, parts)), len(seconds)]
    return list(zip(cuts, cuts[1:]))


def decode_limit(corpus: Corpus, workers: int) -> Run:
    """(a): ``workers`` processes, each decoding a contiguous share of equal seconds (process
    start-up not timed)."""
    jobs = [(corpus.tars, start, stop) for start, stop in equal_shares(corpus.seconds, workers)]
    with multiprocessing.Pool(workers) as pool:
        pool.map(int, range(workers))  # the processes are up
        started = time.perf_counter()
        frames = sum(pool.starmap(decode_clips, jobs))
        wall = time.perf_counter() - started
    seconds = frames / SAMPLE_RATE
    return Run(seconds, wall, seconds, wall, seconds)


def drain(batches, epoch: float, warmup: float, after_warmup) -> Run:
    """Take ``batches``: first ``warmup`` seconds of audio (at least one batch: worker start-up,
    filling the shuffle buffer and the buckets), then call ``after_warmup()`` and time the
    steady window, until ``epoch`` more seconds have arrived."""
    started = time.perf_counter()
    valid = padded = 0
    mark = None  # (time, valid, padded) at the end of the warm-up
    for batch in batches:
        valid += int(batch["lengths"].sum())
        padded += batch["audio"].shape[0] * batch["audio"].shape[-1]
        if mark is None:
            if valid >= warmup * SAMPLE_RATE:
                after_warmup()
                mark = time.perf_counter(), valid, padded
        elif valid - mark[1] >= epoch * SAMPLE_RATE:
            break
    end = time.perf_counter()
    batches.close()  # shuts the workers down
    return Run(valid / SAMPLE_RATE, end - started, (valid - mark[1]) / SAMPLE_RATE, end - mark[0],
               (padded - mark[2]) / SAMPLE_RATE)


def aurora_batches(corpus: Corpus, batching: str, workers: int, args) -> Iterator[dict]:
    cfg = DataConfig(shards=str(corpus.shards), batching=batching, batch_size=args.batch_size,
                     max_seconds_per_batch=args.max_seconds_per_batch, bucket_width=args.bucket_width,
                     num_workers=workers, sample_rate=SAMPLE_RATE, segment_seconds=LONGEST_SECONDS)
    yield from build_loader(cfg, "audio", rank=0, world_size=1, seed=0)


class WavClips(Dataset):
    """What a researcher writes by hand: one audio file per item."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        audio, _ = sf.read(self.paths[index], dtype="float32")
        return torch.from_numpy(audio)


def pad_collate(clips: list[torch.Tensor]) -> dict:
    return {"audio": torch.nn.utils.rnn.pad_sequence(clips, batch_first=True).unsqueeze(1),
            "lengths": torch.tensor([len(c) for c in clips])}


def naive_batches(corpus: Corpus, workers: int, args) -> Iterator[dict]:
    dataset = WavClips(corpus.wavs)
    epochs = math.ceil(args.warmup) + 2  # enough for the warm-up and a whole steady window
    sampler = RandomSampler(dataset, num_samples=epochs * len(dataset), generator=torch.Generator().manual_seed(0))
    yield from DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=pad_collate)


def measure(corpus: Corpus, method: str, workers: int, args) -> Run:
    """One measurement; with ``--cold``, the corpus leaves the page cache first (and again after
    a loader's warm-up)."""
    evict = (lambda: evict_page_cache(corpus.tars + corpus.wavs)) if args.cold else (lambda: None)
    evict()
    if method == "a":
        return decode_limit(corpus, workers)
    if method == "c":
        batches = naive_batches(corpus, workers, args)
    else:
        batches = aurora_batches(corpus, "dynamic" if method == "b" else "fixed", workers, args)
    return drain(batches, corpus.total_seconds, args.warmup * corpus.total_seconds, evict)


# -- report -----------------------------------------------------------------------------------
def verdict(value: float, target: float, at_least: bool) -> str:
    return "PASS" if (value >= target if at_least else value <= target) else "BELOW"


def summarize(corpus: Corpus, runs: dict[int, dict[str, list[Run]]], args) -> dict:
    seconds = np.array(corpus.seconds)
    raw_bytes = 2 * seconds.sum() * SAMPLE_RATE
    result = {
        "command": " ".join(["python -m tools.bench.data_throughput", *sys.argv[1:]]),
        "corpus": {"dir": str(corpus.root), "hours": seconds.sum() / 3600, "clips": len(seconds),
                   "tars": len(corpus.tars), "flac_over_raw_pcm": corpus.flac_bytes / raw_bytes,
                   "seconds_p10_p50_p90_max": [float(np.percentile(seconds, q)) for q in (10, 50, 90, 100)],
                   "seconds_mean": float(seconds.mean())},
        "cpus": os.cpu_count(), "batch_size": args.batch_size, "max_seconds_per_batch": args.max_seconds_per_batch,
        "bucket_width": args.bucket_width, "repeats": args.repeats, "warmup": args.warmup, "cold": args.cold,
        "throughput": {}, "ratios": {}, "padding": {},
    }
    for workers, by_method in runs.items():
        result["throughput"][workers] = {
            m: {"steady_per_worker": statistics.median(r.steady_rate for r in rs) / workers,
                "incl_startup_per_worker": statistics.median(r.startup_rate for r in rs) / workers,
                "steady_per_worker_all": [r.steady_rate / workers for r in rs]}
            for m, rs in by_method.items()}
        rates = {m: t["steady_per_worker"] for m, t in result["throughput"][workers].items()}
        result["ratios"][workers] = {name: rates[name[0]] / rates[name[2]] for name in TARGETS}
    first = runs[args.workers[0]]
    result["padding"] = {m: first[m][0].padding for m in ("b", "b'", "c")}
    return result


def print_report(result: dict) -> None:
    c = result["corpus"]
    p10, p50, p90, longest = c["seconds_p10_p50_p90_max"]
    print(f"\ncorpus: {c['hours']:.2f} h, {c['clips']} clips in {c['tars']} tars, 24 kHz mono 16-bit FLAC "
          f"({c['flac_over_raw_pcm']:.0%} of raw PCM) + the same clips as WAV files")
    print(f"  durations: log-normal, median {MEDIAN_SECONDS:g} s, sigma {LOG_SIGMA}, clipped to "
          f"[{SHORTEST_SECONDS:g}, {LONGEST_SECONDS:g}] s; p10 {p10:.1f} s, p50 {p50:.1f} s, p90 {p90:.1f} s, "
          f"max {longest:.1f} s, mean {c['seconds_mean']:.1f} s")
    print(f"  {c['dir']}")
    cache = "cold (evicted before each measurement)" if result["cold"] else "warm"
    print(f"machine: {result['cpus']} CPUs, torch {torch.__version__}; page cache {cache}; batch_size "
          f"{result['batch_size']}, max_seconds_per_batch {result['max_seconds_per_batch']:g}, "
          f"bucket_width {result['bucket_width']:g}")
    print(f"\nseconds of audio per wall-clock second per worker (x real time), median of {result['repeats']}:")
    print(f"{'W':>2}  {'method':<38}{'steady':>9}{'incl. start-up':>16}   steady, all repeats")
    for workers, by_method in result["throughput"].items():
        for m, t in by_method.items():
            every = " ".join(f"{r:.0f}" for r in t["steady_per_worker_all"])
            print(f"{workers:>2}  {METHODS[m]:<38}{t['steady_per_worker']:>9.0f}{t['incl_startup_per_worker']:>16.0f}"
                  f"   {every}")
    print()
    for workers, ratios in result["ratios"].items():
        line = "; ".join(f"({n[0]})/({n[2]}) = {v:.2f} (target >= {TARGETS[n]:g}) {verdict(v, TARGETS[n], True)}"
                         for n, v in ratios.items())
        print(f"W={workers}: {line}")
    dynamic, fixed, naive = (result["padding"][m] for m in ("b", "b'", "c"))
    print(f"\npadding over the steady epoch: (b) dynamic {dynamic:.1%} (target <= {PADDING_TARGET:.0%}) "
          f"{verdict(dynamic, PADDING_TARGET, False)}; (b') fixed, padded to {LONGEST_SECONDS:g} s {fixed:.1%}; "
          f"(c) pad-to-longest, random order {naive:.1%}")
    print(f"\nthis run: {result['command']}")
    if result["corpus"]["hours"] < 1.99:
        print("(the issue's reference run uses 2 h of audio: add --hours 2)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=0.5, help="hours of audio in the corpus (default 0.5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts W to run (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per method and W (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="(b') and (c) clips per batch (default 8)")
    parser.add_argument("--max-seconds-per-batch", type=float, default=120.0, help="(b) budget (default 120)")
    parser.add_argument("--bucket-width", type=float, default=0.1, help="(b) bucket width (default 0.1)")
    parser.add_argument("--warmup", type=float, default=0.25,
                        help="epochs of audio each loader delivers before its steady window (default 0.25)")
    parser.add_argument("--cold", action="store_true",
                        help="evict the corpus from the page cache before each measurement (reads from disk)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("--data-dir", type=Path, help="where the generated corpus is cached (default: a new "
                        "temporary directory, not a fixed path in /tmp that another user could fill)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.hours <= 0 or args.repeats < 1 or min(args.workers) < 1:
        parser.error("need --hours > 0, --repeats >= 1 and --workers >= 1")
    args.data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="aurora-bench-data-"))
    return args


def main() -> None:
    args = parse_args()
    data = corpus(args.data_dir, args.hours, args.seed)
    warm_page_cache(data.tars + data.wavs)
    runs: dict[int, dict[str, list[Run]]] = {w: {m: [] for m in METHODS} for w in args.workers}
    for repeat in range(args.repeats):
        order = list(METHODS)[repeat % len(METHODS):] + list(METHODS)[:repeat % len(METHODS)]
        for workers in args.workers:
            for method in order:
                run = measure(data, method, workers, args)
                runs[workers][method].append(run)
                print(f"repeat {repeat + 1}/{args.repeats} W={workers} {METHODS[method]:<38} "
                      f"{run.steady_rate / workers:6.0f} x real time per worker", flush=True)
    result = summarize(data, runs, args)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
