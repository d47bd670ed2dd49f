"""Fuzz the data path with malformed samples: cases tried, skips by reason, escapes, peak RSS.

    python -m tools.bench.fuzz_data [--cases 10000] [--workers 2] [--per-tar 25] [--seed 0]

Hypothesis builds malformed members: JSON (nesting 60,000 deep, integers of thousands of
digits, huge, NaN, negative or wrongly typed lengths, bad UTF-8, random bytes), FLAC and WAV
(mutated bytes; headers patched to other sample rates, channel counts and frame counts),
``.npy`` (shapes the data does not hold, other dtypes, out-of-range codes, cut data), keys
(``..``, absolute), missing members and large unused ones. Each tar of them goes through

- the rules (aurora.data: ``seconds`` and ``decode`` of the loader's examples, the verifier's
  checks): anything but a BadSample escapes;
- the reader (``build_loader``, fixed and dynamic batching, one epoch), ``tools.inspect_shards``
  (``verify_shard``), ``data_prep.tokenize`` (``tokenize_shard``, a tiny random codec) and
  ``data_prep.make_shards`` (the members as files of a JSON-lines listing, its lines the json
  members): any exception escapes, and so does a ``sample_error`` skip (a rule is missing).

A case is one sample; each is run in a worker process under an address-space cap (``--max-gb``)
and a time limit per tar, so an allocation or a loop that a limit misses shows as an escape.
The table gives cases, skips by reason (the reader's, fixed batching), escapes by target and
kind, and each worker's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing
import resource
import signal
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

N_Q, CODEBOOK = 4, 64
RATE = 16000
FRAME_RATE = 50.0
PER_TAR = 25
"""Samples per tar, at most (1 to this many, drawn)."""
SECONDS_PER_TAR = 120
"""A tar's time limit in a worker (a sample that hangs a reader shows as an escape)."""


# -- members ------------------------------------------------------------------------------------
def _flac(frames: int, rate: int = RATE, channels: int = 1, fmt: str = "FLAC") -> bytes:
    noise = 0.1 * np.random.default_rng(frames).standard_normal((frames, channels)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, noise, rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


BASE_FLAC = _flac(1600)
BASE_WAV = _flac(800, fmt="WAV")


def _patch_wav(data: bytes, rate: int, channels: int, frames: int) -> bytes:
    """A 16-bit PCM WAV's fmt and data chunk fields (soundfile writes them at fixed offsets)."""
    out = bytearray(data)
    struct.pack_into("<HI", out, 22, channels, rate)
    struct.pack_into("<I", out, 40, frames * 2 * max(channels, 1) & 0xFFFFFFFF)
    return bytes(out)


def _patch_flac(data: bytes, rate: int, channels: int, frames: int) -> bytes:
    """FLAC STREAMINFO's 20-bit rate, 3-bit channels - 1, 5-bit bits - 1 and 36-bit frame count
    (bytes 18-25, right after ``fLaC`` and the block header and the four block/frame sizes)."""
    out = bytearray(data)
    bps = (int.from_bytes(data[18:26], "big") >> 36) & 0x1F
    bits = ((rate & 0xFFFFF) << 44) | (((channels - 1) & 0x7) << 41) | (bps << 36) | (frames & ((1 << 36) - 1))
    out[18:26] = bits.to_bytes(8, "big")
    return bytes(out)


def mutations(data: bytes):
    """``data`` with up to 4 random edits: a byte flipped, a cut, bytes inserted, a run zeroed."""
    edit = st.tuples(st.sampled_from(["flip", "cut", "insert", "zero"]), st.integers(0, max(len(data) - 1, 0)),
                     st.binary(min_size=1, max_size=8))

    def apply(edits) -> bytes:
        out = bytearray(data)
        for kind, at, payload in edits:
            at = min(at, len(out))
            if kind == "flip" and at < len(out):
                out[at] ^= payload[0] or 1
            elif kind == "cut":
                del out[at:]
            elif kind == "insert":
                out[at:at] = payload
            else:
                out[at:at + 16 * len(payload)] = bytes(len(out[at:at + 16 * len(payload)]))
        return bytes(out)

    return st.lists(edit, min_size=1, max_size=4).map(apply)


RATES = st.one_of(st.sampled_from([1, 8000, 16000, 44100, 48001, 384000, 384001, 2**20 - 1, 2**31 - 1, 0]),
                  st.integers(1, 2**20 - 1))
CHANNELS = st.sampled_from([1, 2, 8, 9, 255])
FRAMES = st.sampled_from([0, 1, 800, 10**6, 2**31, 2**35])


def audio_members():
    patched_wav = st.builds(_patch_wav, st.just(BASE_WAV), RATES, CHANNELS, FRAMES)
    patched_flac = st.builds(_patch_flac, st.just(BASE_FLAC), RATES, st.integers(1, 8), FRAMES)
    valid = st.builds(_flac, st.integers(1, 3200), st.sampled_from([8000, 16000, 22050, 44100]),
                      st.integers(1, 2))
    return st.one_of(valid, valid, patched_wav, patched_flac, mutations(BASE_FLAC), mutations(BASE_WAV),
                     st.binary(max_size=64))


def _npy(descr: str, fortran: bool, shape: tuple, data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue() + data


def _codes(n_q: int, frames: int, planted: int | None, at: int) -> bytes:
    codes = np.random.default_rng(frames).integers(0, CODEBOOK, (n_q, frames)).astype(np.int16)
    if planted is not None and codes.size:
        codes.flat[at % codes.size] = planted
    buffer = io.BytesIO()
    np.save(buffer, codes)
    return buffer.getvalue()


def codes_members():
    valid = st.builds(_codes, st.sampled_from([N_Q, N_Q - 1]), st.integers(0, 80),
                      st.sampled_from([None, None, 30000, -5, CODEBOOK, CODEBOOK - 1, 0]), st.integers(0, 10**6))
    dims = st.sampled_from([0, 1, N_Q, 80, 2**31, 2**40])
    lying = st.builds(_npy, st.sampled_from(["<i2", ">i2", "<i4", "<f4", "|b1", "<u2"]), st.booleans(),
                      st.lists(dims, max_size=3).map(tuple), st.binary(max_size=256))
    return st.one_of(valid, valid, lying, mutations(_codes(N_Q, 20, None, 0)), st.binary(max_size=64))


LENGTHS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.sampled_from([10**400, -10**400, 1e308, 5e-324, True, None, "1.0", [1]]))


def json_members():
    plain = st.fixed_dictionaries({"text": st.text(max_size=20)},
                                  optional={"duration": st.floats(0.001, 100.0), "frames": st.integers(1, 100)})
    fields = st.fixed_dictionaries({}, optional={"text": st.one_of(st.text(max_size=20), st.integers()),
                                                 "duration": LENGTHS, "frames": LENGTHS, "sample_rate": RATES})
    valid = fields.map(lambda d: json.dumps(d, default=str).encode())
    deep = st.tuples(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]), st.integers(1, 60000)).map(
        lambda t: t[0][0] * t[1] + b"0" + t[0][1] * t[1])
    digits = st.integers(1000, 6000).map(lambda n: b'{"duration": ' + b"7" * n + b"}")
    ok = plain.map(lambda d: json.dumps(d).encode())
    return st.one_of(ok, ok, ok, ok, valid, deep, digits, st.binary(max_size=64), st.just(b'{"text": "caf\xe9"}'))


KEYS = st.sampled_from(["k"] * 12 + ["../k", "/abs/k", "a/../../k", "sub/k"])


def samples(kind: str):
    main = audio_members() if kind == "audio" else codes_members()
    name = "flac" if kind == "audio" else "codes.npy"
    return st.fixed_dictionaries({"__key__": KEYS, name: main, "json": json_members()},
                                 optional={"extra.bin": st.just(bytes(2 << 20))}).flatmap(
        lambda s: st.sampled_from([(), (), (), (), (), (), (name,), ("json",)]).map(
            lambda drop: {k: v for k, v in s.items() if k not in drop}))


def tars():
    """``(kind, [sample, ...])``: one tar's worth of samples of one kind."""
    return st.sampled_from(["audio", "tokens"]).flatmap(
        lambda kind: st.tuples(st.just(kind), st.lists(samples(kind), min_size=PER_TAR // 5, max_size=PER_TAR)))



# -- targets ------------------------------------------------------------------------------------
class Tally:
    """What the cases did: skips by reason, escapes by (target, exception), cases."""

    def __init__(self) -> None:
        self.cases = 0
        self.skips: Counter = Counter()
        self.escapes: Counter = Counter()
        self.examples: dict = {}

    def escape(self, target: str, exn: BaseException | str) -> None:
        what = exn if isinstance(exn, str) else f"{type(exn).__name__}: {str(exn)[:120]}"
        self.escapes[(target, what.split(":")[0])] += 1
        self.examples.setdefault((target, what.split(":")[0]), what)

    def merge(self, other: "Tally") -> None:
        self.cases += other.cases
        self.skips.update(other.skips)
        self.escapes.update(other.escapes)
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)


def run_rules(kind: str, sample: dict, tally: Tally) -> None:
    """The rules on one sample: the loader's ``seconds`` and ``decode`` and the verifier's check."""
    from aurora.data.audio import AudioExamples
    from aurora.data.skips import BadSample
    from aurora.data.tokens import TokenExamples
    from tools.inspect_shards import CHECKS, Expect

    if kind == "audio":
        examples = AudioExamples(RATE, 1.0, max_seconds=60.0)
        expect = Expect("audio", sample_rate=RATE, max_seconds=60.0)
    else:
        examples = TokenExamples(N_Q, 64, FRAME_RATE, codebook_size=CODEBOOK)
        expect = Expect("tokens", n_q=N_Q, codebook_size=CODEBOOK, frame_rate=FRAME_RATE)
    raw = {"__url__": "fuzz.tar", **sample}
    for name, work in (("seconds", lambda: examples.seconds(raw)),
                       ("decode", lambda: examples.decode(raw, lambda: np.random.default_rng(0))),
                       ("verifier", lambda: CHECKS[kind](raw, expect))):
        try:
            work()
        except BadSample:
            pass
        except Exception as exn:  # noqa: BLE001 - what the fuzz looks for
            tally.escape(f"rules.{name}", exn)


def write_tar(out: Path, kind: str, cases: list[dict]) -> Path:
    """``out`` holding ``shard-000000.tar`` (the cases, then one valid sample, so that an epoch
    always has a usable one) and its manifest."""
    from aurora.data.manifest import write_manifest
    from aurora.data.tars import TarWriter

    out.mkdir(parents=True, exist_ok=True)
    good = {"flac": _flac(1600), "json": b'{"text": "ok"}'} if kind == "audio" else \
        {"codes.npy": _codes(N_Q, 30, None, 0), "json": b'{"text": "ok"}'}
    with open(out / "shard-000000.tar", "wb") as file:
        writer = TarWriter(file)
        for i, sample in enumerate([*cases, {"__key__": "good", **good}]):
            # webdataset's TarWriter would refuse the keys under test; the raw tarfile writer does not.
            super(TarWriter, writer).write({**sample, "__key__": f"{sample['__key__']}{i}"})
        writer.close()
    entries = [{"name": "shard-000000.tar", "samples": len(cases) + 1, "seconds": 1.0}]
    if kind == "audio":
        write_manifest(out, "audio", entries, None)
    else:
        write_manifest(out, "tokens", entries, RATE, n_q=N_Q, codebook_size=CODEBOOK, frame_rate=FRAME_RATE,
                       codec="fuzz")
    return out


def run_reader(shards: Path, kind: str, count: int, tally: Tally) -> None:
    from aurora.data import DataConfig, build_loader
    from aurora.data.skips import SAMPLE_ERROR

    for batching in ("fixed", "dynamic"):
        cfg = DataConfig(shards=str(shards), batch_size=1, num_workers=0, shuffle_buffer=0, sample_rate=RATE,
                         segment_seconds=0.5, context_frames=64, batching=batching, max_seconds_per_batch=2.0,
                         max_seconds=60.0, max_member_mb=1.0)
        seen = 0
        try:
            for batch in itertools.islice(build_loader(cfg, kind, 0, 1, seed=0), 4 * count):
                seen += len(batch["keys"]) + sum(batch["skipped"].values())
                if batching == "fixed":
                    tally.skips.update(batch["skipped"])
                if batch["skipped"].get(SAMPLE_ERROR):
                    tally.escape(f"reader.{batching}", "sample_error skip")
                if seen >= count:
                    break
        except Exception as exn:  # noqa: BLE001
            tally.escape(f"reader.{batching}", exn)


def run_inspect(shards: Path, kind: str, tally: Tally) -> None:
    from aurora.data.skips import SAMPLE_ERROR
    from tools.inspect_shards import Expect, verify_shard

    expect = Expect(kind, n_q=N_Q if kind == "tokens" else None, codebook_size=CODEBOOK if kind == "tokens" else None,
                    frame_rate=FRAME_RATE if kind == "tokens" else None, max_seconds=60.0, max_member_mb=1.0)
    try:
        result = verify_shard(str(shards / "shard-000000.tar"), expect, None)
    except Exception as exn:  # noqa: BLE001
        tally.escape("inspect_shards", exn)
        return
    if any(p.kind == SAMPLE_ERROR for p in result.problems):
        tally.escape("inspect_shards", "sample_error problem")


def run_tokenize(shards: Path, encoder, tally: Tally) -> None:
    from aurora.data.audio import AudioExamples
    from data_prep.tokenize import Settings, tokenize_shard

    settings = Settings("single", 2.0, 8, 0.0, "fp32", True, 1, 10**6)
    examples = AudioExamples(RATE, segment_seconds=None, max_seconds=60.0)
    try:
        record = tokenize_shard(0, str(shards / "shard-000000.tar"), shards / "tokens.tar", encoder, examples, None,
                                settings)
    except Exception as exn:  # noqa: BLE001
        tally.escape("tokenize", exn)
        return
    if record["skipped"].get("sample_error"):
        tally.escape("tokenize", "sample_error skip")


def run_make_shards(work: Path, cases: list[dict], tally: Tally) -> None:
    """The audio members as files, listed by lines made of the json members (with a ``path``)."""
    from data_prep import make_shards

    (work / "clips").mkdir(parents=True)
    lines = []
    for i, sample in enumerate(cases):
        name = f"clips/{i}.{'flac' if i % 2 else 'wav'}"
        if "flac" in sample:
            (work / name).write_bytes(sample["flac"])
        text = sample.get("json", b"{}").decode("utf-8", "replace").replace("\n", " ").replace("\r", " ")
        lines.append(f'{{"path": "{name}", ' + text[1:] if text.startswith("{") and len(text) > 2 else text)
    (work / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            make_shards.main(["--manifest", str(work / "metadata.jsonl"), "--out", str(work / "out")])
    except SystemExit as exit:  # no usable clip: a one-line error, by design
        if exit.code not in (0, None) and not isinstance(exit.code, str):
            tally.escape("make_shards", f"exit {exit.code}")
    except Exception as exn:  # noqa: BLE001
        tally.escape("make_shards", exn)
        return
    skipped = work / "out" / "skipped.jsonl"
    if skipped.is_file() and any(json.loads(line)["reason"] == "error" for line in skipped.read_text().splitlines()):
        tally.escape("make_shards", "error skip")


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"a tar took more than {SECONDS_PER_TAR} s")


def run_tar(kind: str, cases: list[dict], tally: Tally, encoder, heavy: bool = True) -> None:
    """Every target on one tar of ``cases``."""
    tally.cases += len(cases)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_TAR)
    try:
        for sample in cases:
            run_rules(kind, sample, tally)
        with tempfile.TemporaryDirectory() as tmp:
            shards = write_tar(Path(tmp) / "shards", kind, cases)
            run_reader(shards, kind, len(cases) + 1, tally)
            run_inspect(shards, kind, tally)
            if kind == "audio" and heavy:
                run_tokenize(shards, encoder, tally)
                run_make_shards(Path(tmp) / "listing", cases, tally)
    except _Timeout as exn:
        tally.escape("timeout", str(exn))
    finally:
        signal.alarm(0)


def tiny_encoder():
    import torch

    from aurora.models.codec import Codec, CodecConfig
    from data_prep.batch_encode import BatchEncoder

    torch.manual_seed(0)
    codec = Codec(CodecConfig(channels=8, strides=[2, 4, 5, 8], latent_dim=16, n_q=N_Q, codebook_size=CODEBOOK)).eval()
    return BatchEncoder(codec.requires_grad_(False), torch.device("cpu"), "fp32", "single", 2.0)


def fuzz(tars_to_run: int, worker_seed: int, heavy: bool = True) -> Tally:
    """Run ``tars_to_run`` hypothesis-made tars through every target (in this process)."""
    import logging

    logging.getLogger("aurora.data.skips").setLevel(logging.CRITICAL)  # one warning per case is noise here
    tally = Tally()
    encoder = tiny_encoder() if heavy else None

    @seed(worker_seed)
    @settings(max_examples=tars_to_run, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(tars())
    def one(tar):
        run_tar(*tar, tally, encoder, heavy)

    one()
    return tally


def _worker(job: tuple[int, int, float]) -> tuple[Tally, float]:
    """Fuzz until ``cases`` samples were tried, in rounds of 50 tars (a seed each)."""
    cases, worker_seed, max_gb = job
    cap = int(max_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    torch.set_num_threads(1)
    tally = Tally()
    for round_seed in itertools.count(worker_seed):
        tally.merge(fuzz(50, round_seed))
        if tally.cases >= cases:
            break
    return tally, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.fuzz_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="samples to try, in all (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-gb", type=float, default=6.0,
                        help="address-space cap per worker, GiB (torch alone maps ~2; default %(default)s)")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.workers < 1 or not args.max_gb > 0:
        parser.error("--cases and --workers must be at least 1, --max-gb > 0")
    jobs = [(-(-args.cases // args.workers), (args.seed * args.workers + w) * 10**6, args.max_gb)
            for w in range(args.workers)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(_worker, jobs)
    total = Tally()
    for tally, _ in results:
        total.merge(tally)
    print(f"cases tried: {total.cases} ({args.workers} workers)")
    print("\nskips by reason (the reader, fixed batching)")
    for reason, n in total.skips.most_common():
        print(f"  {reason:<16} {n:>7}")
    print(f"\nescapes: {sum(total.escapes.values())}")
    for (target, kind), n in total.escapes.most_common():
        print(f"  {target:<16} {n:>5}  {total.examples[(target, kind)]}")
    print("\npeak RSS per worker: " + ", ".join(f"{rss:.0f} MB" for _, rss in results))
    return 1 if total.escapes else 0


if __name__ == "__main__":
    sys.exit(main())
