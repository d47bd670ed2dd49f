"""Encoding throughput of data_prep.tokenize: one clip at a time against length-bucketed batches,
measured in one run on the same clips.

The clips: a procedural corpus (data_prep.synth, ``--clips`` clips of ``--min-seconds`` to
``--max-seconds``, 16 kHz) packed into one audio shard by data_prep.make_shards in a temp dir,
then decoded once into memory, so only the encoder is timed. The codec: the ``model:`` section
of ``--config`` (default configs/codec/tiny.yaml) with fresh random weights (speed does not
depend on them).

Methods, each through the ``BatchEncoder`` that data_prep.tokenize uses (data_prep.batch_encode)
on the whole shard as one bucketing window:

  single        one clip per ``Codec.encode`` call (the old tokenizer);
  masked        clips sorted by length, batches of at most ``--batch-seconds`` padded seconds
                of clips within ``--bucket-width`` of each other in length, length masks on
                the convs (what ``--batching auto`` picks for a conv codec);
  equal-length  only clips of the same length in frames share a batch.

Each method encodes all clips once as a warm-up, then ``--repeats`` times, methods interleaved
so machine noise hits all alike; the median rate is printed as seconds of audio per second,
with the batch shape (clips per batch, padding, how full the ``--batch-seconds`` budget is)
and the ratio to ``single``. Every method's codes are compared with those of ``single`` (a note
names any method that gave other codes for some clip).

    python -m tools.bench.tokenize_throughput [--clips 16] [--batch-seconds 2 16] [--repeats 3]
                                              [--device cpu|cuda] [--precision fp32|bf16]
                                              [--clock auto|wall|process]

On a CPU a conv over one ~1 s clip is already compute bound: batching pays for short clips
only (and larger batches fall out of cache), hence tokenize's CPU default of 2 s. On a GPU a
one-clip loop of a small codec is expected to be bound by kernel launches, which is what
batching removes (run with ``--device cuda`` to measure it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from aurora.data.audio import AudioExamples
from aurora.data.tars import read_shard
from aurora.models.codec import Codec, CodecConfig
from data_prep import make_shards, synth
from data_prep.batch_encode import DEFAULT_BATCH_SECONDS, DEFAULT_BUCKET_WIDTH, BatchEncoder


def codec_config(path: Path) -> CodecConfig:
    """CodecConfig from the yaml's ``model:`` section (keys this CodecConfig lacks are named and left out)."""
    model = OmegaConf.to_container(OmegaConf.load(path)).get("model", {}) or {}
    known = {f.name for f in dataclasses.fields(CodecConfig)}
    unknown = sorted(set(model) - known)
    if unknown:
        print(f"note: {path} model keys not in this CodecConfig, left out: {unknown}")
    merged = OmegaConf.merge(OmegaConf.structured(CodecConfig), {k: v for k, v in model.items() if k in known})
    return OmegaConf.to_object(merged)


def build_clips(root: Path, args: argparse.Namespace, sample_rate: int) -> list[torch.Tensor]:
    synth.main(["--out", str(root / "corpus"), "--num-clips", str(args.clips), "--sample-rate", str(sample_rate),
                "--min-seconds", str(args.min_seconds), "--max-seconds", str(args.max_seconds)])
    make_shards.main(["--manifest", str(root / "corpus" / "metadata.jsonl"), "--out", str(root / "shards"),
                      "--samples-per-shard", str(args.clips)])
    examples = AudioExamples(sample_rate, segment_seconds=None)
    return [examples.decode(sample, crop_rng=None)["audio"]
            for sample in read_shard(str(root / "shards" / "shard-000000.tar"), print)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/codec/tiny.yaml"))
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--max-seconds", type=float, default=2.0)
    parser.add_argument("--batch-seconds", type=float, nargs="+", default=None,
                        help="budgets to time (default: tokenize's default for the device, and 8x that)")
    parser.add_argument("--bucket-width", type=float, default=DEFAULT_BUCKET_WIDTH,
                        help=f"masked batching's bucket width, as tokenize's (default {DEFAULT_BUCKET_WIDTH})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None)
    parser.add_argument("--clock", choices=("auto", "wall", "process"), default="auto",
                        help="process: this process's CPU time, which other load on a shared machine barely "
                             "moves (auto: on a CPU with one torch thread; else wall)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    default_budget = DEFAULT_BATCH_SECONDS[device.type]
    budgets = args.batch_seconds or [default_budget, 8 * default_budget]

    cfg = codec_config(args.config)
    torch.manual_seed(0)
    codec = Codec(cfg).eval().to(device).requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        clips = build_clips(Path(tmp), args, cfg.sample_rate)
    seconds = sum(len(c) for c in clips) / cfg.sample_rate

    methods = {"single": BatchEncoder(codec, device, precision, "single", default_budget)}
    for budget in budgets:
        methods[f"masked@{budget:g}s"] = BatchEncoder(codec, device, precision, "masked", budget, args.bucket_width)
        methods[f"equal-length@{budget:g}s"] = BatchEncoder(codec, device, precision, "equal-length", budget)
    reference = None
    for name, encoder in methods.items():  # warm-up, and the codes must agree
        codes = encoder.encode(clips)
        reference = reference or codes
        if not all(torch.equal(a, b) for a, b in zip(codes, reference)):
            print(f"note: {name} gave other codes than single for "
                  f"{sum(not torch.equal(a, b) for a, b in zip(codes, reference))} of {len(clips)} clips")
    clock_name = args.clock if args.clock != "auto" else (
        "process" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall")
    clock = time.process_time if clock_name == "process" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    for repeat in range(args.repeats):
        for name in order[repeat % len(order):] + order[: repeat % len(order)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = clock()
            methods[name].encode(clips)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(clock() - started)

    print(f"device: {device.type}  precision: {precision}  threads: {torch.get_num_threads()}  codec: channels "
          f"{cfg.channels}, strides {list(cfg.strides)}, latent {cfg.latent_dim}, n_q {cfg.n_q} x {cfg.codebook_size}")
    print(f"clips: {len(clips)}, {seconds:.1f} s of audio ({args.min_seconds:g}-{args.max_seconds:g} s each), "
          f"{args.repeats} timed passes per method, median, {clock_name} clock")
    print(f"{'method':<22}{'audio s/s':>10}{'x single':>10}{'clips/batch':>13}{'padding':>9}{'budget fill':>13}")
    single = seconds / statistics.median(times["single"])
    for name, encoder in methods.items():
        rate = seconds / statistics.median(times[name])
        shape = encoder.stats.summary()
        fill = "-" if name == "single" else f"{100 * shape['budget_fill']:.0f}%"
        print(f"{name:<22}{rate:>10.1f}{rate / single:>10.2f}{shape['clips_per_batch']:>13.2f}"
              f"{100 * shape['padding']:>8.1f}%{fill:>13}")
    batched = f"masked@{budgets[0]:g}s"
    print(f"ratio batched/single (audio s/s, {batched}): {seconds / statistics.median(times[batched]) / single:.2f}")


if __name__ == "__main__":
    main()
