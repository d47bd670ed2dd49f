"""Audio shards + a trained codec -> token shards, in batches, resumable, on any number of ranks.

    torchrun --nproc-per-node 8 -m data_prep.tokenize --shards SHARDS --codec CODEC --out TOKENS
        [--batch-seconds S] [--bucket-window N] [--bucket-width W]
        [--batching auto|masked|equal-length|single]
        [--precision bf16|fp32] [--device cpu|cuda|cuda:N] [--decode-threads N] [--resample]
        [--max-seconds S] [--max-member-mb MB] [--latents]

``--codec`` is an exported codec (``model.safetensors`` + ``config.json``, ``aurora.exported``:
e.g. the ``codec/`` folder of another token set) or, with ``--trust-checkpoint`` only, a codec
training run (``config.yaml`` + ``checkpoints/``: its latest complete checkpoint) or one
checkpoint of such a run (``RUN/checkpoints/step_N``): a run's checkpoint files are pickles, which
can run code when read (docs/reliability.md, the trust boundary).

Output, per audio shard, a token shard of the same name: ``KEY.codes.npy`` (int16 [n_q, T],
T = ceil(samples / hop_length)) + ``KEY.json`` (the source json plus ``frames`` and
``frame_rate``), samples in the source order. With ``--latents``, a latent shard instead: ``KEY.latents.npy``
(float16 [latent_dim, T], the codec encoder's output before quantization: what a latent
diffusion model learns, and what the codec's decoder turns back into audio) + ``KEY.json``;
its manifest is of kind ``latents`` and holds ``latent_dim``. Bad samples are skipped and counted, as in
training, by the loader's rules (aurora.data): clips longer than ``--max-seconds`` by their
header (``data.max_seconds``; a clip is decoded whole) and members larger than
``--max-member-mb`` are skipped before they are decoded or read. Next to it ``NAME.done.json`` records the finished shard. At the end rank 0 writes
``TOKENS/manifest.json`` (from every shard's record) and a copy of the codec
(``TOKENS/codec/``), so the token set can be decoded back to audio on its own. The manifest
names the codec by ``codec_id`` (a hash of its config and weights; the same whether it was
loaded from a run or an export) and holds ``frame_rate``, ``n_q``, ``codebook_size``,
``sample_rate``, the settings, and this run's throughput under ``stats``.

Work split: the shards not yet done are dealt round-robin to the ranks; a shard is encoded by
one rank alone, so its tokens do not depend on the world size.

Batching: within a shard, clips are encoded in length-bucketed batches that give each clip the
codes of its one-clip encode; ``data_prep.batch_encode`` explains how, the batching settings
(``--batching``, ``--batch-seconds``, ``--bucket-window``, ``--bucket-width``) and their
defaults, and what "the same tokens" means numerically (``--precision``).

Resuming: a token shard is written to ``NAME.tmp`` and renamed into place, then its record is
written (also tmp + rename). Run the same command again: shards whose record matches the tar
on disk (its size) and the source shard (its size) are kept; an interrupted shard (only
``NAME.tmp``, or a tar without record) is redone. Records made with another codec or precision
stop the run with an error rather than mixing tokens. The manifest covers every shard, also
those done by an earlier run.

Errors in the input (no such codec or shards, audio at another sample rate than the codec's
without ``--resample``, an output directory holding another codec's tokens) end the run with one
line saying what is wrong and what to do, exit status 2.

Test hook: ``AURORA_FAULT_TOKENIZE_KILL=I`` makes the rank that encodes shard I (0-based, in
the shard list) SIGKILL itself after writing that shard's first window of clips into
``NAME.tmp``, in a job's first attempt (torchrun's ``TORCHELASTIC_RESTART_COUNT`` is 0).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torch.distributed as dist
from torch import nn

from aurora.config.schema import Backend, DistConfig
from aurora.data.audio import AudioExamples
from aurora.data.config import DataConfig, DataError
from aurora.data.manifest import resolve_shards, write_manifest
from aurora.data.members import metadata
from aurora.data.pairs import npy_bytes
from aurora.data.skips import SampleFailures, SkipCounter
from aurora.data.tars import TarWriter, read_shard
from aurora.distributed import barrier, init_distributed, shutdown
from data_prep.batch_encode import (BATCHING, DEFAULT_BATCH_SECONDS, DEFAULT_BUCKET_WIDTH, DEFAULT_BUCKET_WINDOW,
                                    BatchEncoder, BatchStats, masking_problem, ordered_prefetch)
from data_prep.shard_job import (FINAL_WAIT_S, RECORD_VERSION, JobError, fault_kill_shard, finished_record,
                                 longest_text, pick_device, record_path, run_job, write_record)
from data_prep.shard_writer import TAR_MTIME

CODEC_DIR = "codec"
FAULT_KILL_ENV = "AURORA_FAULT_TOKENIZE_KILL"
PROG = "data_prep.tokenize"


# -- the codec ------------------------------------------------------------------------------------
def load_codec(path: str | Path, trust: bool) -> tuple[nn.Module, str]:
    """The codec at ``path`` (an exported codec, or if ``trust`` a run or one of its checkpoints)
    in eval mode, and a few words on where it came from."""
    from aurora.exported import ModelLoadError
    from aurora.tasks.codec.load import load_codec as load  # the training stack reads runs

    try:
        loaded = load(path, trust=trust, what="--codec")
    except ModelLoadError as e:
        raise JobError(str(e)) from None
    return loaded.codec, loaded.source


def codec_id(codec: nn.Module) -> str:
    """A short hash of the codec's config and weights: equal for equal codecs, however loaded."""
    digest = hashlib.sha256(repr(sorted(vars(codec.cfg).items())).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# -- reading and writing shards -------------------------------------------------------------------
@dataclass
class Settings:
    batching: str
    batch_seconds: float
    bucket_window: int
    bucket_width: float
    precision: str
    resample: bool
    decode_threads: int
    max_member_bytes: int


def tokenize_shard(index: int, url: str, out_path: Path, encoder: BatchEncoder, examples: AudioExamples,
                   expected: int | None, settings: Settings) -> dict:
    """Encode every usable sample of one audio shard into ``out_path``; return its record."""
    started = time.perf_counter()
    cfg = encoder.codec.cfg
    shard = os.path.basename(url)
    counter = SkipCounter()
    failures = SampleFailures()

    def decode(sample: dict):
        """``(example, meta, None)``, or ``(None, None, exception)``: counted (or raised) in order, below."""
        try:
            if not settings.resample:
                try:
                    rate = sf.info(io.BytesIO(sample["flac"])).samplerate
                except Exception:  # noqa: BLE001 - a bad member: decode() below names the problem
                    rate = cfg.sample_rate
                if rate != cfg.sample_rate:
                    raise JobError(
                        f"{url}: sample {sample['__key__']} is {rate} Hz but the codec expects {cfg.sample_rate} Hz: "
                        f"pass --resample to resample clips to {cfg.sample_rate} Hz as they are read, or make the "
                        f"shards at that rate (python -m data_prep.make_shards --sample-rate {cfg.sample_rate})")
            return examples.decode(sample, crop_rng=None), metadata(sample), None
        except Exception as exn:  # noqa: BLE001 - a bad sample, or a broken job: SampleFailures tells
            return None, None, exn

    member = "latents.npy" if encoder.latents else "codes.npy"
    kill_at = fault_kill_shard(FAULT_KILL_ENV)
    samples, frames_total, audio_samples, text_bytes = 0, 0, 0, 0
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as file:
        sink = TarWriter(file, mtime=TAR_MTIME)
        window: list[tuple[dict, dict]] = []

        def flush() -> None:
            nonlocal samples, frames_total, audio_samples, text_bytes
            if not window:
                return
            codes = encoder.encode([example["audio"] for example, _ in window])
            for (example, meta), c in zip(window, codes):
                meta.update(frames=c.shape[-1], frame_rate=cfg.frame_rate)
                sink.write({"__key__": example["key"], member: npy_bytes(c.numpy()),
                            "json": json.dumps(meta).encode()})
                samples += 1
                frames_total += c.shape[-1]
                audio_samples += len(example["audio"])
                text_bytes = max(text_bytes, len(meta.get("text", "").encode("utf-8")))
            window.clear()
            if index == kill_at:  # test hook: die with a half-written NAME.tmp
                file.flush()
                os.fsync(file.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

        raw = read_shard(url, counter.add, expected, examples.members, settings.max_member_bytes)
        for example, meta, error in ordered_prefetch(decode, raw, settings.decode_threads, 4 * settings.decode_threads):
            if isinstance(error, JobError):
                raise error
            if error is not None:
                reason, detail = failures.reason(error)
                counter.add(reason, shard, detail)
                continue
            failures.succeeded()
            window.append((example, meta))
            if len(window) >= settings.bucket_window:
                flush()
        flush()
        sink.close()
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, out_path)
    return {"version": RECORD_VERSION, "name": out_path.name, "samples": samples,
            "seconds": frames_total / cfg.frame_rate, "frames": frames_total,
            "audio_seconds": audio_samples / cfg.sample_rate, "text_bytes_max": text_bytes, "skipped": dict(sorted(counter.take().items())),
            "tar_bytes": out_path.stat().st_size, "source": url, "source_bytes": os.path.getsize(url),
            "wall_s": time.perf_counter() - started}


def _rates(audio_seconds: float, tokens: int, wall_s: float) -> dict:
    return {"audio_seconds_per_s": audio_seconds / wall_s if wall_s > 0 else 0.0,
            "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0}


def _describe(stats: dict) -> str:
    return (f"{stats['audio_seconds']:.1f} s of audio ({stats['clips']} clips, {stats['tokens']} tokens) in "
            f"{stats['wall_s']:.2f} s: {stats['audio_seconds_per_s']:.1f} s of audio/s, "
            f"{stats['tokens_per_s']:.0f} tokens/s")


# -- the command ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring for resuming and the record format, and "
                                            "data_prep.batch_encode's for batching.")
    parser.add_argument("--shards", required=True,
                        help="audio shard set: a directory with manifest.json or a brace pattern")
    parser.add_argument("--codec", required=True,
                        help="an exported codec folder, or (with --trust-checkpoint) a codec training run directory "
                             "or one of its checkpoints")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read --codec even if it is a training run: its checkpoint files are pickles, which can "
                             "run code; only for runs you made or trust")
    parser.add_argument("--out", required=True, help="output directory for the token shards; run again to resume")
    parser.add_argument("--batch-seconds", type=float, default=None,
                        help="padded audio seconds per encoder batch (default: 200 on CUDA, 2 on CPU)")
    parser.add_argument("--bucket-window", type=int, default=DEFAULT_BUCKET_WINDOW,
                        help=f"clips sorted by length together when forming batches (default {DEFAULT_BUCKET_WINDOW})")
    parser.add_argument("--bucket-width", type=float, default=DEFAULT_BUCKET_WIDTH,
                        help="clips batched together differ in length by at most this fraction, which bounds "
                             f"the padding, as data.bucket_width does in training (default {DEFAULT_BUCKET_WIDTH})")
    parser.add_argument("--batching", choices=BATCHING, default="auto",
                        help="auto: masked when the codec passes the probe, else equal-length (default); "
                             "single: one clip at a time")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="encoder precision (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda (this rank's local GPU) or cuda:N (default: cuda if available)")
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="threads decoding FLAC ahead of the encoder (default: this rank's share of the "
                             "CPU cores, at most 4)")
    parser.add_argument("--max-seconds", type=float, default=DataConfig.max_seconds,
                        help="skip (and count) clips longer than this by their header, before decoding them "
                             "(default %(default)g, as data.max_seconds)")
    parser.add_argument("--max-member-mb", type=float, default=DataConfig.max_member_mb,
                        help="skip (and count) samples with a member larger than this many MB, unread "
                             "(default %(default)g, as data.max_member_mb)")
    parser.add_argument("--latents", action="store_true",
                        help="write the encoder's latents before quantization (KEY.latents.npy, float16 "
                             "[latent_dim, T]: a latent set for the diffusion recipe) instead of codes")
    parser.add_argument("--resample", action="store_true",
                        help="resample clips whose rate differs from the codec's (default: stop with an error)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.batch_seconds is not None and not args.batch_seconds > 0:
        parser.error(f"--batch-seconds must be > 0, got {args.batch_seconds}")
    if args.bucket_width < 0:
        parser.error(f"--bucket-width must be >= 0, got {args.bucket_width}")
    if args.bucket_window < 1:
        parser.error(f"--bucket-window must be at least 1, got {args.bucket_window}")
    for name in ("max_seconds", "max_member_mb"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.decode_threads is not None and args.decode_threads < 1:
        parser.error(f"--decode-threads must be at least 1, got {args.decode_threads}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; give a directory")


def _check_shards(spec: str, manifest: dict | None, sample_rate: int, resample: bool) -> None:
    if manifest is None:
        return
    if manifest["kind"] != "audio":
        raise JobError(f"--shards {spec} is a {manifest['kind']} shard set, not audio: give the audio shards "
                            f"made by data_prep.make_shards")
    rate = manifest["sample_rate"]
    if rate != sample_rate and not resample:
        held = f"{rate} Hz audio" if rate is not None else "audio at several sample rates"
        raise JobError(
            f"--shards {spec} holds {held} but the codec expects {sample_rate} Hz: pass --resample to resample "
            f"clips to {sample_rate} Hz as they are read, or make the shards at that rate "
            f"(python -m data_prep.make_shards --sample-rate {sample_rate})")


def run(args: argparse.Namespace) -> None:
    # Input checks before any collective: every rank sees the same files, so all stop alike.
    try:
        urls, manifest = resolve_shards(args.shards)
    except (DataError, FileNotFoundError) as exn:
        raise JobError(f"--shards: {exn}") from None
    codec, source = load_codec(args.codec, args.trust_checkpoint)
    cfg = codec.cfg
    _check_shards(args.shards, manifest, cfg.sample_rate, args.resample)
    ident = codec_id(codec)

    env = init_distributed(DistConfig(backend=Backend.gloo, timeout_s=FINAL_WAIT_S))
    try:
        device = pick_device(args.device, env.device)
        precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
        batch_seconds = args.batch_seconds or DEFAULT_BATCH_SECONDS[device.type]
        codec = codec.to(device).requires_grad_(False)
        batching = args.batching
        problem = masking_problem(codec, device) if batching in ("auto", "masked") else None
        if problem and batching == "masked":
            raise JobError(f"--batching masked does not give this codec exact per-clip codes ({problem}): "
                                f"use --batching equal-length (or auto)")
        if batching == "auto":
            batching = "equal-length" if problem else "masked"
            if problem and env.is_main:
                print(f"{PROG}: length masking does not apply to this codec ({problem}); batching clips of "
                      f"equal length only", file=sys.stderr)
        threads = args.decode_threads or max(1, min(4, len(os.sched_getaffinity(0)) // env.local_world_size))
        settings = Settings(batching, batch_seconds, args.bucket_window, args.bucket_width, precision, args.resample,
                            threads, round(args.max_member_mb * 1e6))

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        expect = {"codec_id": ident, "precision": precision, "n_q": cfg.n_q,
                  "output": "latents" if args.latents else "codes"}
        done = {i: r for i, url in enumerate(urls) if (r := finished_record(out, url, expect, "token set")) is not None}
        todo = [i for i in range(len(urls)) if i not in done]
        barrier()  # everyone has seen which shards were done before anyone writes a record

        examples = AudioExamples(cfg.sample_rate, segment_seconds=None, max_seconds=args.max_seconds)
        expected = {shard["name"]: shard["samples"] for shard in manifest["shards"]} if manifest else {}
        encoder = BatchEncoder(codec, device, precision, batching, batch_seconds, args.bucket_width, args.latents)
        started = time.perf_counter()
        mine = todo[env.rank::env.world_size]
        clips = frames = 0
        audio_seconds = 0.0
        for index in mine:
            url = urls[index]
            record = tokenize_shard(index, url, out / os.path.basename(url), encoder, examples,
                                    expected.get(os.path.basename(url)), settings)
            record.update(expect, batching=batching, rank=env.rank, world_size=env.world_size)
            write_record(out, record)
            clips += record["samples"]
            frames += record["frames"]
            audio_seconds += record["audio_seconds"]
        wall = time.perf_counter() - started
        mine_stats = {"rank": env.rank, "shards": len(mine), "clips": clips, "audio_seconds": audio_seconds,
                      "frames": frames, "tokens": frames * cfg.n_q, "wall_s": wall,
                      "encode_s": encoder.stats.encode_s, **_rates(audio_seconds, frames * cfg.n_q, wall),
                      "batch_stats": vars(encoder.stats).copy()}
        gathered: list = [None] * env.world_size
        dist.all_gather_object(gathered, mine_stats)
        if env.is_main:
            _finish(out, urls, expect, gathered, codec, ident, source, args, settings, device, len(done))
        barrier()
    finally:
        shutdown()


def _finish(out: Path, urls: list[str], expect: dict, ranks: list[dict], codec: nn.Module, ident: str,
            source: str, args: argparse.Namespace, settings: Settings, device: torch.device, done_before: int) -> None:
    cfg = codec.cfg
    records = []
    for url in urls:
        record = finished_record(out, url, expect, "token set")
        if record is None:
            raise JobError(f"{record_path(out, os.path.basename(url))} is missing or does not match its tar "
                                f"after every rank finished: run the same command again to redo that shard")
        records.append(record)
    skipped: Counter = Counter()
    for record in records:
        skipped.update(record["skipped"])
    batch = BatchStats()
    for part in ranks:
        batch.add(BatchStats(**part.pop("batch_stats")))
    wall = max(part["wall_s"] for part in ranks)
    total = {key: sum(part[key] for part in ranks) for key in ("shards", "clips", "audio_seconds", "frames", "tokens",
                                                               "encode_s")}
    total.update(wall_s=wall, **_rates(total["audio_seconds"], total["tokens"], wall))
    stats = {"ranks": ranks, "total": total, "batches": batch.summary(), "shards_done_before": done_before,
             "device": device.type}

    from aurora.tasks.codec.load import export_codec

    export_codec(codec.cpu(), out / CODEC_DIR)
    shards = [{"name": r["name"], "samples": r["samples"], "seconds": r["seconds"]} for r in records]
    what = ({"kind": "latents", "latent_dim": cfg.latent_dim, "latent_dtype": "float16"} if args.latents
            else {"kind": "tokens", "n_q": cfg.n_q, "codebook_size": cfg.codebook_size})
    write_manifest(out, shards=shards, sample_rate=cfg.sample_rate, **what, frame_rate=cfg.frame_rate,
                   hop_length=cfg.hop_length, codec=CODEC_DIR, codec_id=ident,
                   text_bytes_max=longest_text(records),
                   codec_source=source, source=str(args.shards), skipped=dict(sorted(skipped.items())),
                   settings={"batching": settings.batching, "batch_seconds": settings.batch_seconds,
                             "bucket_window": settings.bucket_window, "bucket_width": settings.bucket_width,
                             "precision": settings.precision,
                             "resample": settings.resample},
                   stats=stats)
    clips = sum(s["samples"] for s in shards)
    held = f"latents [{cfg.latent_dim}, T]" if args.latents else f"{cfg.n_q} codebooks"
    print(f"tokenized {clips} clips into {len(shards)} shards in {out} ({held} at {cfg.frame_rate:g} Hz, "
          f"codec {ident}); skipped: {dict(skipped) or 'none'}")
    print(f"this run: {total['shards']} shards encoded, {done_before} already done; {settings.batching} batching "
          f"({settings.precision}, {device.type}): {batch.summary()['clips_per_batch']:.1f} clips/batch, padding "
          f"{100 * batch.summary()['padding']:.1f}%, batch budget ({settings.batch_seconds:g} s) filled "
          f"{100 * batch.summary()['budget_fill']:.0f}%")
    for part in ranks:
        print(f"  rank {part['rank']}: {_describe(part)}")
    print(f"  total ({len(ranks)} rank{'s' if len(ranks) > 1 else ''}): {_describe(total)}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    run_job(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
