"""Measure a trained codec on held-out audio, with the DAC paper's metric definitions.

    python -m tools.codec_eval RUN --shards EVAL [--batches N] [--batch-size B] [--segment-seconds S]
                               [--bitrate-curve] [--no-speech-metrics] [--device cpu|cuda] [--out DIR]
    python -m tools.codec_eval RUN --shards EVAL --roundtrip TOKENS [--limit N] [--atol 1e-5]

RUN is an exported codec folder (model.safetensors + config.json, as written by
``aurora.tasks.codec.export_codec``, e.g. ``TOKENS/codec``) or, with ``--trust-checkpoint`` only,
a codec training run directory (config.yaml + checkpoints/; its latest complete checkpoint is
used): a run's checkpoint files are pickles, which can run code when read. EVAL is an audio shard set (a
directory with manifest.json, or a brace pattern); it is read by aurora's loader with the run's
data settings (defaults for an exported codec): clips cropped to ``--segment-seconds``, batches
of ``--batch-size``. By default every clip of EVAL is scored once (one pass over the set);
``--batches N`` stops after N batches.

Prints a table with mel distance, STFT distance and SI-SDR (definitions: aurora.metrics.codec_quality),
the bitrate, each codebook's usage (entropy / log2 K, perplexity) and, for a 16 kHz codec, PESQ
and STOI (when the pesq / pystoi packages are installed). ``--bitrate-curve`` adds one row per
number of codebooks (1 .. n_q). ``--out DIR`` writes FLAC pairs and spectrogram PNGs of the first
clips.

``--roundtrip TOKENS`` checks a token shard set written by ``data_prep.tokenize`` instead: for
every token sample, the source clip (same key, in EVAL) is re-encoded with RUN's codec, and the
codes must equal the stored ones exactly, and the token set's own codec copy (``TOKENS/codec``)
must decode them to RUN's reconstruction within ``--atol``. Run it on the device type the tokens
were made on (a GPU's arithmetic may pick another code where two are nearly tied).

Exit status: 0 done (round trip: everything matched), 1 round-trip mismatch, 2 bad input (the
message names what is wrong and what to do).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from aurora.config import ConfigError
from aurora.data import DataConfig, DataError, build_loader
from aurora.data.audio import AudioExamples
from aurora.data.manifest import resolve_shards
from aurora.data.skips import BadSample
from aurora.data.tars import read_shard
from aurora.metrics import codec_quality as cq
from aurora.tasks.codec.artifacts import write_reconstructions
from aurora.exported import WEIGHTS, ModelLoadError, is_exported
from aurora.tasks.codec.load import load_codec as load

PROG = "python -m tools.codec_eval"


class EvalError(Exception):
    """Bad input; the message is one line naming the problem and what to do."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("run", type=Path, metavar="RUN",
                        help="exported codec folder, or (with --trust-checkpoint) codec training run directory")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read RUN even if it is a training run: its checkpoint files are pickles, which can run "
                             "code; only for runs you made or trust")
    parser.add_argument("--shards", required=True, metavar="EVAL", help="audio shard set to evaluate on")
    parser.add_argument("--batches", type=int, default=None, metavar="N",
                        help="stop after N batches (default: one pass over every clip of EVAL)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="clips per batch (default: the run's)")
    parser.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                        help="crop clips to S seconds (default: the run's data.segment_seconds)")
    parser.add_argument("--num-workers", type=int, default=1, metavar="N", help="data loader workers (default 1)")
    parser.add_argument("--bitrate-curve", action="store_true", help="also one row per number of codebooks")
    parser.add_argument("--no-speech-metrics", action="store_true", help="skip PESQ and STOI")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to run (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write KEY.orig.flac, KEY.recon.flac and KEY.png of the first clips here")
    parser.add_argument("--max-clips", type=int, default=4, metavar="N", help="clips written to --out (default 4)")
    parser.add_argument("--resample", action="store_true",
                        help="allow EVAL at another sample rate than the codec's (the loader resamples it)")
    parser.add_argument("--roundtrip", type=Path, default=None, metavar="TOKENS",
                        help="check a token shard set against RUN's codec and the source clips in EVAL")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="--roundtrip: check at most N samples")
    parser.add_argument("--atol", type=float, default=1e-5, help="--roundtrip: audio tolerance (default 1e-5)")
    args = parser.parse_args(argv)
    for name in ("batches", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.segment_seconds is not None and not args.segment_seconds > 0:
        parser.error(f"--segment-seconds must be > 0, got {args.segment_seconds}")
    if args.num_workers < 0 or args.max_clips < 1:
        parser.error("--num-workers must be >= 0 and --max-clips >= 1")
    return args


# -- loading -----------------------------------------------------------------------------------------
def load_codec(run: Path, trust: bool):
    """(codec in eval mode, the run's DataConfig or None, seed, eval batches default, description)."""
    try:
        loaded = load(run, trust=trust, what="RUN")
    except ModelLoadError as e:
        raise EvalError(str(e)) from None
    cfg = loaded.run_config
    if cfg is None:
        return loaded.codec, None, 0, 8, loaded.source
    return loaded.codec, cfg.data, cfg.run.seed, cfg.trainer.eval_batches, loaded.source


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda, but torch sees no CUDA device: use --device cpu")
    return torch.device(name)


def check_eval_shards(spec: str, sample_rate: int, resample: bool) -> dict | None:
    """The manifest of the audio shard set ``spec`` (None for a pattern without one)."""
    _, manifest = resolve_shards(spec)
    if manifest is None:
        return None
    if manifest["kind"] != "audio":
        raise EvalError(f"--shards {spec} holds {manifest['kind']} shards, not audio: give audio shards "
                        f"(a token set is checked with --roundtrip TOKENS)")
    rate = manifest.get("sample_rate")
    if isinstance(rate, int) and rate != sample_rate and not resample:
        raise EvalError(f"--shards {spec} is at {rate} Hz but the codec runs at {sample_rate} Hz: make eval "
                        f"shards at {sample_rate} Hz (data_prep.make_shards --sample-rate {sample_rate}), or "
                        f"pass --resample to score resampled audio")
    return manifest


class Pass:
    """One pass over an eval set: batches with clips seen before dropped, until every clip of
    the set was delivered (or skipped as bad), or ``max_batches`` batches."""

    def __init__(self, make_loader, total: int | None, max_batches: int | None):
        self.make_loader = make_loader
        self.total = total
        self.max_batches = max_batches
        self.clips = 0
        self.samples = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[dict]:
        seen: set[str] = set()
        for number, batch in enumerate(self.make_loader(), start=1):
            self.skipped += sum(batch.get("skipped", {}).values())
            keep = []
            for i, key in enumerate(batch["keys"]):  # (one batch may end a pass and start the next)
                if key not in seen:
                    seen.add(key)
                    keep.append(i)
            if keep:
                index = torch.tensor(keep)
                sub = {"audio": batch["audio"][index], "lengths": batch["lengths"][index],
                       "keys": [batch["keys"][i] for i in keep]}
                self.clips += len(keep)
                self.samples += int(sub["lengths"].sum())
                yield sub
            if self.max_batches is not None and number >= self.max_batches:
                return
            if self.total is not None and (len(seen) + self.skipped >= self.total or number > self.total + 1):
                return  # (every batch of a pass brings a new clip: more batches than clips means the pass is over)


# -- tables ----------------------------------------------------------------------------------------
COLUMNS = (
    ("n_q", "codebooks", "{:.0f}"),
    ("bitrate_kbps", "kbps", "{:.2f}"),
    ("mel_distance", "mel_dist", "{:.3f}"),
    ("stft_distance", "stft_dist", "{:.3f}"),
    ("si_sdr_db", "si_sdr_dB", "{:.2f}"),
    ("pesq", "pesq", "{:.2f}"),
    ("stoi", "stoi", "{:.3f}"),
    ("usage_entropy", "usage", "{:.3f}"),
    ("perplexity", "perplexity", "{:.1f}"),
)
"""(metric, header, format); usage and perplexity are the means over the codebooks used."""


def _per_codebook(metrics: dict[str, float], name: str) -> list[float]:
    prefix = f"{cq.PREFIX}{name}/q"
    found = sorted((int(key[len(prefix):]), value) for key, value in metrics.items()
                   if key.startswith(prefix) and key[len(prefix):].isdigit())
    return [value for _, value in found]


def _cell(metrics: dict[str, float], name: str) -> float | None:
    if name in ("usage_entropy", "perplexity"):
        values = _per_codebook(metrics, name)
        return sum(values) / len(values) if values else None
    return metrics.get(f"{cq.PREFIX}{name}")


def format_table(rows: Sequence[dict[str, float]]) -> str:
    """Fixed-width table of ``measure_quality`` results, one row each; a column only where some row
    has the metric ("-" where a row lacks it). usage / perplexity: means over the row's codebooks."""
    columns = [(name, header, fmt) for name, header, fmt in COLUMNS
               if any(_cell(row, name) is not None for row in rows)]
    cells = [[fmt.format(v) if (v := _cell(row, name)) is not None else "-" for name, _, fmt in columns]
             for row in rows]
    widths = [max([len(header)] + [len(r[j]) for r in cells]) for j, (_, header, _) in enumerate(columns)]
    lines = ["  ".join(header.rjust(w) for (_, header, _), w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_usage(metrics: dict[str, float]) -> str:
    """Fixed-width table of each codebook's normalised entropy and perplexity."""
    entropy, perplexity = _per_codebook(metrics, "usage_entropy"), _per_codebook(metrics, "perplexity")
    lines = [f"{'codebook':>8}  {'entropy/log2K':>13}  {'perplexity':>10}"]
    lines += [f"{'q' + str(i):>8}  {e:>13.3f}  {p:>10.1f}" for i, (e, p) in enumerate(zip(entropy, perplexity))]
    return "\n".join(lines)


# -- the two modes -----------------------------------------------------------------------------------
def evaluate(args: argparse.Namespace, codec, run_data: DataConfig | None, seed: int, eval_batches: int,
             described: str) -> int:
    cfg = codec.cfg
    manifest = check_eval_shards(args.shards, cfg.sample_rate, args.resample)
    base = run_data if run_data is not None else DataConfig(shards=args.shards)
    changes = {"shards": args.shards, "eval_shards": None, "sample_rate": cfg.sample_rate,
               "num_workers": args.num_workers}
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.segment_seconds is not None:
        changes["segment_seconds"] = args.segment_seconds
    data_cfg = dataclasses.replace(base, **changes)
    total = None
    if manifest is not None:  # the samples of the shards the spec names (a pattern may name a few of them)
        urls, _ = resolve_shards(args.shards)
        names = {Path(url).name for url in urls}
        total = sum(shard["samples"] for shard in manifest["shards"] if shard["name"] in names)
    max_batches = args.batches if args.batches is not None or total is not None else eval_batches
    speech = not args.no_speech_metrics

    def new_pass() -> Pass:
        return Pass(lambda: build_loader(data_cfg, "audio", rank=0, world_size=1, seed=seed), total, max_batches)

    print(f"codec: {described} ({cfg.sample_rate} Hz, {cfg.n_q} codebooks x {cfg.codebook_size} entries at "
          f"{cfg.frame_rate:g} Hz, {cq.bitrate_kbps(cfg):.2f} kbps)")
    first = new_pass()
    rows = [cq.measure_quality(codec, first, speech_metrics=speech)]
    print(f"eval: {first.clips} clips, {first.samples / cfg.sample_rate:.1f} s of audio from {args.shards} "
          f"(segments of {data_cfg.segment_seconds:g} s; {first.skipped} bad samples skipped)")
    if speech and cfg.sample_rate != cq.SPEECH_SAMPLE_RATE:
        print(f"(PESQ and STOI are computed only for {cq.SPEECH_SAMPLE_RATE} Hz codecs)")
    print()
    print(format_table(rows))
    print()
    print(format_usage(rows[0]))
    if args.bitrate_curve:
        curve = cq.bitrate_curve(codec, new_pass, speech_metrics=speech)
        print()
        print("bitrate curve (first k codebooks):")
        print(format_table(curve))
    if args.out is not None:
        batch = next(iter(new_pass()))
        written = write_reconstructions(codec, batch, args.out, max_clips=args.max_clips)
        print()
        print(f"wrote {len(written)} files ({min(args.max_clips, len(batch['keys']))} clips) to {args.out}")
    return 0


def _read_tokens(spec: Path) -> tuple[dict[str, np.ndarray], dict, list[str]]:
    urls, manifest = resolve_shards(str(spec))
    if manifest is None or manifest.get("kind") != "tokens":
        raise EvalError(f"--roundtrip {spec} is not a token shard set (no manifest.json of kind tokens): "
                        f"give the output directory of data_prep.tokenize")
    stored: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for url in urls:
        for sample in read_shard(url, lambda reason, shard, detail: problems.append(f"{shard}: {reason}: {detail}")):
            try:
                stored[sample["__key__"]] = np.load(io.BytesIO(sample["codes.npy"]), allow_pickle=False)
            except (KeyError, ValueError, OSError, EOFError) as exn:
                problems.append(f"{sample['__key__']}: unreadable codes.npy ({exn})")
    return stored, manifest, problems


def roundtrip(args: argparse.Namespace, codec, device: torch.device) -> int:

    tokens = args.roundtrip
    if not tokens.is_dir():
        raise EvalError(f"--roundtrip {tokens} is not a directory: give the output directory of data_prep.tokenize")
    stored, manifest, problems = _read_tokens(tokens)
    cfg = codec.cfg
    copy_dir = tokens / str(manifest.get("codec") or "codec")
    if not is_exported(copy_dir):
        raise EvalError(f"{copy_dir} holds no exported codec ({WEIGHTS}): re-create the token set "
                        f"with data_prep.tokenize, which copies its codec there")
    try:
        copy = load(copy_dir, what="the token set's codec").codec.to(device)
    except ModelLoadError as e:
        raise EvalError(str(e)) from None
    if copy.cfg.sample_rate != cfg.sample_rate or manifest.get("sample_rate") not in (None, cfg.sample_rate):
        raise EvalError(f"sample-rate mismatch: the token set {tokens} is at {manifest.get('sample_rate')} Hz "
                        f"(its codec {copy.cfg.sample_rate} Hz) but RUN's codec runs at {cfg.sample_rate} Hz: "
                        f"check it against the codec it was made with")
    if dataclasses.asdict(copy.cfg) != dataclasses.asdict(cfg):
        print(f"roundtrip: MISMATCH: the token set's codec ({copy_dir}) is configured differently from RUN's "
              f"codec: these tokens were not made by this codec")
        return 1
    ours, theirs = codec.state_dict(), copy.state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        print(f"roundtrip: the token set's codec copy ({copy_dir}) holds other weights than RUN's codec")
    if problems:
        print(f"roundtrip: {len(problems)} unreadable token samples, e.g. {problems[0]}")
    precision = (manifest.get("settings") or {}).get("precision", "fp32")
    if precision == "bf16":
        print("roundtrip: the tokens were encoded in bf16; re-encoding in bf16 too (a near-tie between two "
              "codebook entries may still come out differently)")
    keys = sorted(stored)[: args.limit] if args.limit else sorted(stored)
    wanted = set(keys)
    urls, _ = resolve_shards(args.shards)
    examples = AudioExamples(cfg.sample_rate, segment_seconds=None)
    source_problems: list[str] = []
    matched, max_diff, mismatches, checked = 0, 0.0, [], set()
    with torch.no_grad():
        for url in urls:
            for sample in read_shard(url, lambda reason, shard, detail: source_problems.append(f"{shard}: {detail}")):
                key = sample["__key__"]
                if key not in wanted or key in checked:
                    continue
                checked.add(key)
                try:
                    audio = examples.decode(sample, crop_rng=None)["audio"]
                except BadSample as bad:
                    mismatches.append(f"{key}: source clip unreadable ({bad.detail})")
                    continue
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    codes = codec.encode(audio.view(1, 1, -1).to(device))
                tok = torch.from_numpy(stored[key].astype(np.int64))[None].to(device)
                if codes.shape != tok.shape:
                    mismatches.append(f"{key}: codes {list(tok.shape[1:])} stored, {list(codes.shape[1:])} re-encoded")
                    continue
                differing = int((codes != tok).sum())
                diff = float((codec.decode(codes) - copy.decode(tok)).abs().max())
                max_diff = max(max_diff, diff)
                if differing:
                    mismatches.append(f"{key}: {differing} of {tok.numel()} codes differ")
                elif not diff <= args.atol:
                    mismatches.append(f"{key}: decoded audio differs by {diff:.3g} > {args.atol:g}")
                else:
                    matched += 1
    missing = sorted(wanted - checked)
    print(f"roundtrip: {matched} of {len(keys)} token samples match (codes equal to RUN's re-encoding of the "
          f"source clip, token codec's decoding within {args.atol:g} of RUN's); "
          f"max abs audio difference {max_diff:.3g}")
    if missing:
        print(f"roundtrip: MISMATCH: {len(missing)} token samples have no source clip in {args.shards} "
              f"(e.g. {missing[0]}): give --shards the audio shards the tokens were made from")
    if mismatches:
        print(f"roundtrip: MISMATCH: {len(mismatches)} samples differ, e.g.")
        for line in mismatches[:5]:
            print(f"  {line}")
    if missing or mismatches:
        return 1
    print("roundtrip: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (0 done, 1 round-trip mismatch, 2 bad input)."""
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        codec, run_data, seed, eval_batches, described = load_codec(args.run, args.trust_checkpoint)
        codec = codec.to(device).eval()
        if args.roundtrip is not None:
            return roundtrip(args, codec, device)
        return evaluate(args, codec, run_data, seed, eval_batches, described)
    except (EvalError, FileNotFoundError, DataError, ConfigError) as exn:
        message = str(exn).splitlines()[0] if str(exn) else type(exn).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
