"""The resumable, elastic, infinite per-rank batch stream.

One *reader* is one DataLoader worker of one rank (``world_size * max(num_workers, 1)``
readers in all). For each epoch every reader, independently and deterministically:

1. takes its share of the epoch from the ``EpochPlan`` (aurora.data.plan): a contiguous run of
   the seeded shard order, equal in samples for every reader (±1), so no reader waits on
   another however the shards divide;
2. reads it front to back (aurora.data.tars) through a ``PositionShuffle`` buffer;
3. decodes, resamples and crops each sample (the crop from an RNG seeded by seed, epoch and
   key: a sample's example never depends on workers or timing) and batches them: ``fixed``
   batches of ``batch_size``, or ``dynamic`` batches from duration buckets
   (aurora.data.buckets) of up to ``max_seconds_per_batch`` padded seconds.

Epochs follow each other without a break (a batch may span two), so every reader, hence every
rank, always has a next batch.

Resume: each batch carries its reader's *cursor*: the epoch, the number of draws from the
shuffle buffer in it, and (dynamic batching) the samples drawn but still waiting in a bucket.
The loader keeps the cursor of the last batch it took from each worker. Resuming with the same
readers replays exactly: the shuffle's state is recomputed from the cursor without I/O and only
the buffered and waiting samples are read again. Resuming with another number of readers
(world size or num_workers) re-plans the epoch in progress: what no reader delivered is split
over the new readers, then epochs go on as usual (elastic resume; see aurora.data.plan).

The DataLoader takes batches from its workers round-robin, so the worker that delivers batch n
is n mod num_workers; a resumed loader rotates worker roles to keep that order.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from aurora.data.audio import AudioExamples
from aurora.data.buckets import DurationBuckets
from aurora.data.config import DataConfig, DataError
from aurora.data.manifest import KINDS, resolve_shards
from aurora.data.plan import EpochPlan, Ranges, normalize
from aurora.data.shuffle import PositionShuffle
from aurora.data.skips import READ_ERROR, BadSample, SampleFailures, SkipCounter
from aurora.data.tars import ShardReader, index_shard
from aurora.data.latents import LatentExamples
from aurora.data.pairs import PairExamples
from aurora.data.tokens import TokenExamples

STATE_VERSION = 2
OPEN_SHARDS = 4
"""Shard readers (open files + header indexes) each reader keeps."""


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The RNG for one sample's random choices (its crop) in one epoch."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed % 2**64, epoch, digest])


def shuffle_seed(seed: int, epoch: int, reader: int) -> str:
    return f"samples:{seed}:{epoch}:{reader}"


@dataclass
class Cursor:
    """Where one reader stands after a batch."""

    epoch: int = 0
    draws: int = 0
    """Draws from the epoch's shuffle buffer so far."""
    waiting: list[tuple[int, int]] = field(default_factory=list)
    """(epoch, global index) of drawn samples not batched yet (dynamic batching's buckets)."""

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "draws": self.draws, "waiting": [list(w) for w in self.waiting]}

    @staticmethod
    def from_dict(d: dict) -> "Cursor":
        return Cursor(d["epoch"], d["draws"], [tuple(w) for w in d["waiting"]])


class BatchStream(IterableDataset):
    """The batches of one rank; each DataLoader worker runs one reader of it."""

    def __init__(self, urls: list[str], expected: dict[str, int], problems: list[tuple[str, str]],
                 plan: EpochPlan, examples, batch_size: int, buckets: DurationBuckets | None,
                 shuffle_buffer: int, seed: int, rank: int, num_workers: int, max_member_bytes: int):
        self.urls = urls
        self.expected = expected
        """Samples per tar listed by the manifest (a tar holding fewer lost the others)."""
        self.problems = problems
        """(shard, detail) of tars without a manifest count that cannot be read to their end."""
        self.plan = plan
        self.examples = examples
        self.max_member_bytes = max_member_bytes
        """Members larger than this are not read (too_large)."""
        self.batch_size = batch_size
        self.buckets = buckets
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.workers = max(num_workers, 1)
        self.start_batches = 0
        """Batches the consumer had taken when this iteration started (sets worker roles)."""
        self.start_cursors = [Cursor() for _ in range(self.workers)]
        """Per worker role: where to continue from."""

    def __iter__(self) -> Iterator[tuple[int, Cursor, dict]]:
        info = get_worker_info()
        role = ((info.id if info else 0) + self.start_batches) % self.workers
        reader = _Reader(self, self.rank * self.workers + role)
        for cursor, batch in reader.batches(self.start_cursors[role]):
            yield role, cursor, batch


class _Reader:
    """One reader's pipeline: plan share → shuffle → decode → batches."""

    def __init__(self, stream: BatchStream, reader: int):
        self.s = stream
        self.plan = stream.plan
        self.reader = reader
        self.counter = SkipCounter()
        self.failures = SampleFailures()
        self._open: OrderedDict[int, ShardReader] = OrderedDict()

    # -- reading samples ------------------------------------------------------------------------
    def _shard(self, shard: int) -> ShardReader:
        if shard not in self._open:
            url = self.s.urls[shard]
            self._open[shard] = ShardReader(url, self.s.expected.get(url))
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
        self._open.move_to_end(shard)
        return self._open[shard]

    def fetch(self, epoch: int, index: int) -> dict | BadSample:
        shard, number = self.plan.locate(epoch, index)
        reader = self._shard(shard)
        try:
            return reader.sample(number, self.s.examples.members, self.s.max_member_bytes)
        except BadSample as bad:
            self.counter.add(bad.reason, reader.index.name, bad.detail)
            return bad

    def draws(self, epoch: int, start: int) -> Iterator[tuple[int, dict | BadSample]]:
        """(global index, raw sample) of this reader's share of ``epoch`` in shuffled order,
        from draw number ``start`` on."""
        share = self.plan.share(epoch, self.reader)
        shuffle = PositionShuffle(len(share), self.s.shuffle_buffer, shuffle_seed(self.s.seed, epoch, self.reader))
        shuffle.skip(start)
        held = {p: self.fetch(epoch, share.index(p)) for p in sorted(shuffle.buffer)}  # in file order
        if start:  # a resumed reader: what it read again was counted before the checkpoint
            self.counter.take()
        fetched = shuffle.pulled
        while (p := shuffle.draw()) is not None:
            for q in range(fetched, shuffle.pulled):  # read every pulled sample, in file order
                held[q] = self.fetch(epoch, share.index(q))
            fetched = shuffle.pulled
            yield share.index(p), held.pop(p)

    def decode(self, epoch: int, raw: dict) -> dict | None:
        return self._counting(raw, lambda: self.s.examples.decode(
            raw, lambda: sample_rng(self.s.seed, epoch, raw["__key__"])))

    def measure(self, raw: dict) -> float | None:
        return self._counting(raw, lambda: self.s.examples.seconds(raw))

    def _counting(self, raw: dict, work):
        """``work()``, or None when the sample turns out bad (counted). Any Exception counts: the
        rules (BadSample) cannot foresee every input; ``SampleFailures`` raises the one that
        shows the reader itself broken (failing on sample after sample)."""
        try:
            result = work()
        except Exception as exn:  # noqa: BLE001 - see the docstring
            reason, detail = self.failures.reason(exn)
            self.counter.add(reason, os.path.basename(raw["__url__"]), detail)
            return None
        self.failures.succeeded()
        return result

    # -- batching -------------------------------------------------------------------------------
    def batches(self, cursor: Cursor) -> Iterator[tuple[Cursor, dict]]:
        epoch, draws = cursor.epoch, cursor.draws
        examples: list[dict] = []  # fixed batching: decoded, not batched yet
        waiting: dict[int, list[tuple[int, int, dict]]] = {}  # dynamic: bucket → (epoch, index, raw)
        for e, index in cursor.waiting:
            raw = self.fetch(e, index)
            if not isinstance(raw, BadSample) and (seconds := self.measure(raw)) is not None:
                waiting.setdefault(self.s.buckets.bucket(seconds), []).append((e, index, raw))
        while True:
            usable = draws > 0  # a resumed epoch delivered before
            if draws == 0 and self.reader == 0:
                for shard, detail in self.s.problems:
                    self.counter.add(READ_ERROR, shard, detail)
            for index, raw in self.draws(epoch, draws):
                draws += 1
                if isinstance(raw, BadSample):
                    continue
                if self.s.buckets is None:
                    example = self.decode(epoch, raw)
                    if example is None:
                        continue
                    usable = True
                    examples.append(example)
                    if len(examples) == self.s.batch_size:
                        yield Cursor(epoch, draws), self._collate(examples)
                        examples = []
                    continue
                seconds = self.measure(raw)
                if seconds is None:
                    continue
                usable = True
                bucket = self.s.buckets.bucket(seconds)
                members = waiting.setdefault(bucket, [])
                members.append((epoch, index, raw))
                if len(members) == self.s.buckets.capacity(bucket):
                    del waiting[bucket]
                    decoded = [x for e, _, r in members if (x := self.decode(e, r)) is not None]
                    if decoded:
                        pending = [(e, i) for b in sorted(waiting) for e, i, _ in waiting[b]]
                        yield Cursor(epoch, draws, pending), self._collate(decoded)
            if not usable and draws > 0:
                raise DataError(
                    f"data reader {self.reader} (rank {self.s.rank}) got no usable sample in epoch {epoch} "
                    f"from its {draws} samples: the shards are unreadable or corrupt (see the warnings above)")
            epoch, draws = epoch + 1, 0

    def _collate(self, examples: list[dict]) -> dict:
        batch = self.s.examples.collate(examples)
        batch["skipped"] = self.counter.take()
        return batch


def leftover(plan: EpochPlan, cursors: dict[int, Cursor], shuffle_buffer: int) -> dict[int, Ranges]:
    """The samples no reader delivered, per epoch from the earliest one in progress: what an
    elastic resume must still read before going on with whole epochs."""
    first = min(c.epoch for c in cursors.values())
    last = max(c.epoch for c in cursors.values())
    partial = {e: r for e, r in plan.partial.items() if e > last}
    for epoch in range(first, last + 1):
        undelivered: Ranges = []
        for reader, cursor in cursors.items():
            share = plan.share(epoch, reader)
            if cursor.epoch < epoch:
                undelivered += share.ranges
            elif cursor.epoch == epoch:
                shuffle = PositionShuffle(len(share), shuffle_buffer, shuffle_seed(plan.seed, epoch, reader))
                shuffle.skip(cursor.draws)
                undelivered += share.indices(shuffle.buffer) + share.tail(shuffle.pulled)
            undelivered += [(i, i + 1) for e, i in cursor.waiting if e == epoch]
        partial[epoch] = normalize(undelivered)
    return partial


def _shards_digest(urls: list[str], counts: list[int]) -> str:
    text = "\n".join(f"{os.path.basename(u)} {c}" for u, c in zip(urls, counts))
    return hashlib.sha1(text.encode()).hexdigest()


class ResumableLoader:
    """An infinite iterable of batches for one rank, with ``state_dict``/``load_state_dict``.

    Each ``iter()`` continues where the batches taken so far (or a loaded state) left off.
    """

    def __init__(self, stream: BatchStream, num_workers: int, kind: str, world_size: int, digest: str,
                 pin_memory: bool = False):
        self.stream = stream
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        """Batches in page-locked memory, so that ``batch_to_device``'s copy to a GPU is asynchronous."""
        self.kind = kind
        self.world_size = world_size
        self.digest = digest
        self.batches = 0
        self.cursors = [Cursor() for _ in range(stream.workers)]

    def __iter__(self) -> Iterator[dict]:
        self.stream.start_batches = self.batches
        self.stream.start_cursors = list(self.cursors)
        # Its own generator: creating worker seeds must not draw from the trainer's global RNG.
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(self.stream.seed),
                            worker_init_fn=_own_process_group)
        for role, cursor, batch in loader:
            self.cursors[role] = cursor
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        """This rank's position (small: cursors, and the plan of epochs left part-done)."""
        return {"version": STATE_VERSION, "kind": self.kind, "seed": self.stream.seed, "shards": self.digest,
                "rank": self.stream.rank, "world_size": self.world_size, "num_workers": self.num_workers,
                "shuffle_buffer": self.stream.shuffle_buffer, "batches": self.batches,
                "plan": self.stream.plan.state_dict(), "workers": [c.to_dict() for c in self.cursors]}

    def load_state_dict(self, states: list[dict]) -> None:
        """Continue from the states of *every* rank of the run that saved (``state_dict`` of
        each): exactly, with the same world size and workers; elastically otherwise."""
        states = sorted(states, key=lambda s: s.get("rank", 0))
        for state in states:
            self._check(state)
        saved = states[0]
        plan = self.stream.plan
        if saved["world_size"] == self.world_size and saved["num_workers"] == self.num_workers \
                and saved["shuffle_buffer"] == self.stream.shuffle_buffer:
            own = states[self.stream.rank]
            plan.partial = EpochPlan.partial_from_state(own["plan"])
            self.batches = own["batches"]
            self.cursors = [Cursor.from_dict(w) for w in own["workers"]]
            return
        old_workers = max(saved["num_workers"], 1)
        old_plan = EpochPlan(plan.counts, plan.seed, len(states) * old_workers,
                             EpochPlan.partial_from_state(saved["plan"]))
        cursors = {s["rank"] * old_workers + role: Cursor.from_dict(w)
                   for s in states for role, w in enumerate(s["workers"])}
        plan.partial = leftover(old_plan, cursors, saved["shuffle_buffer"])
        first = min(plan.partial)
        self.batches = 0
        self.cursors = [Cursor(first, 0) for _ in self.cursors]

    def _check(self, state: dict) -> None:
        if state.get("backend") == "dali":
            raise DataError("this checkpoint's data position was saved by data.backend=dali: resume with "
                            "data.backend=dali (the two readers' positions do not translate)")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state version {state.get('version')!r} is not supported "
                            f"(supports {STATE_VERSION}): this checkpoint's data position cannot be used")
        now = {"kind": self.kind, "seed": self.stream.seed, "shards": self.digest}
        changed = {k: (state[k], v) for k, v in now.items() if state[k] != v}
        if changed:
            details = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in changed.items())
            raise DataError(f"cannot resume the data stream ({details}): resume with the same run.seed and "
                            f"the same shard set (data.shards) as the run that saved the checkpoint")


def _own_process_group(worker_id: int) -> None:
    """In a DataLoader worker: leave the trainer's process group. torchrun signals a stop with
    ``killpg``; stopping is the trainer's decision (it checkpoints first), and a worker killed
    by that signal would fail the trainer's next batch instead. The worker still ends when the
    trainer does (DataLoader shuts it down, or it sees its parent gone)."""
    os.setpgid(0, 0)


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on ``device`` (keys and texts stay as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_loader(cfg: DataConfig, kind: str, rank: int, world_size: int, seed: int, pin_memory: bool = False):
    """The batch stream of ``rank`` out of ``world_size`` for ``kind`` ("audio", "tokens", "pairs" or "latents");
    ``pin_memory`` for a trainer on a GPU."""
    _check(cfg, kind, rank, world_size)
    urls, manifest = resolve_shards(cfg.shards)
    if manifest is not None and manifest["kind"] != kind:
        make = f" (made from audio shards and a codec by data_prep.tokenize --latents)" if kind == "latents" else ""
        raise DataError(f"data.shards {cfg.shards!r} holds {manifest['kind']} shards, but this task "
                        f"trains on {kind}: point data.shards at {kind} shards{make}")
    if cfg.backend == "dali":
        from aurora.data.dali import build_dali_loader

        return build_dali_loader(cfg, kind, rank, world_size, seed, urls, manifest)
    listed = {s["name"]: s["samples"] for s in manifest["shards"]} if manifest else {}
    expected = {url: listed[os.path.basename(url)] for url in urls if os.path.basename(url) in listed}
    # Without a manifest the sample counts come from walking every tar's headers once; what
    # cannot be read there has no count to be lost from, so it is reported once per epoch.
    counts, problems = [], []
    for url in urls:
        if url in expected:
            counts.append(expected[url])
            continue
        index = index_shard(url)
        counts.append(len(index.samples))
        if index.problem:
            problems.append((index.name, index.problem))
    readers = world_size * max(cfg.num_workers, 1)
    if sum(counts) < readers:
        unreadable = f"; {len(problems)} shard(s) cannot be read, e.g. {': '.join(problems[0])}" if problems else ""
        raise DataError(
            f"data.shards {cfg.shards!r} holds {sum(counts)} readable samples, fewer than the {readers} readers "
            f"(world_size x data.num_workers){unreadable}: use fewer data workers, or more (readable) data")
    dynamic = cfg.batching == "dynamic"
    if kind == "audio":
        examples = AudioExamples(cfg.sample_rate, cfg.segment_seconds, pad_to_longest=dynamic,
                                 max_seconds=cfg.max_seconds)
        longest = cfg.segment_seconds
    elif kind == "latents":
        dim = (manifest or {}).get("latent_dim")
        if not isinstance(dim, int) or dim < 1:
            raise DataError(f"latent shards {cfg.shards!r} need a manifest.json with latent_dim (their channels): "
                            f"re-create them with data_prep.tokenize --latents")
        frame_rate = manifest.get("frame_rate")
        examples = LatentExamples(dim, cfg.context_frames, frame_rate, pad_to_longest=dynamic)
        longest = cfg.context_frames / frame_rate if dynamic else 0.0
    else:
        noun, maker = _CODE_SHARDS[kind]
        for key, what in (("n_q", "the number of codebooks"), ("codebook_size", "the codes' bound")):
            if manifest is None or not isinstance(manifest.get(key), int) or manifest[key] < 1:
                raise DataError(f"{noun} shards {cfg.shards!r} need a manifest.json with {key} ({what}): "
                                f"re-create them with {maker}")
        frame_rate = manifest.get("frame_rate")
        if dynamic and not isinstance(frame_rate, (int, float)):
            raise DataError(f"data.batching=dynamic measures {noun} examples in seconds, but {cfg.shards!r}'s "
                            f"manifest has no frame_rate: re-create the {noun} shards with {maker}")
        if kind == "tokens":
            examples = TokenExamples(manifest["n_q"], cfg.context_frames, frame_rate, pad_to_longest=dynamic,
                                     codebook_size=manifest["codebook_size"])
        else:
            examples = PairExamples(manifest["n_q"], cfg.context_frames, frame_rate, pad_to_longest=dynamic,
                                    codebook_size=manifest["codebook_size"],
                                    reference=(manifest.get("reference") or {}).get("id"))
        longest = cfg.context_frames / frame_rate if dynamic else 0.0
    buckets = DurationBuckets(longest, cfg.max_seconds_per_batch, cfg.bucket_width) if dynamic else None
    plan = EpochPlan(counts, seed, readers)
    stream = BatchStream(urls, expected, problems, plan, examples, cfg.batch_size, buckets, cfg.shuffle_buffer,
                         seed, rank, cfg.num_workers, round(cfg.max_member_mb * 1e6))
    return ResumableLoader(stream, cfg.num_workers, kind, world_size, _shards_digest(urls, counts), pin_memory)


_CODE_SHARDS = {"tokens": ("token", "data_prep.tokenize"), "pairs": ("pair", "data_prep.make_pairs")}
"""Each kind of code shards: its name in messages, and the command that writes it."""


def _check(cfg: DataConfig, kind: str, rank: int, world_size: int) -> None:
    if kind not in KINDS:
        raise DataError(f"data kind must be one of {list(KINDS)}, got {kind!r}")
    if cfg.shards == MISSING or not cfg.shards:
        raise DataError("data.shards is not set: give a shard directory (with manifest.json) or a brace "
                        "pattern, e.g. data.shards=data/shards")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    choices = {"backend": ("native", "dali"), "batching": ("fixed", "dynamic")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise DataError(f"data.{name} must be one of {list(allowed)}, got {getattr(cfg, name)!r}")
    positive = {"batch_size": cfg.batch_size, "sample_rate": cfg.sample_rate,
                "segment_seconds": cfg.segment_seconds, "context_frames": cfg.context_frames,
                "max_seconds_per_batch": cfg.max_seconds_per_batch, "max_seconds": cfg.max_seconds,
                "max_member_mb": cfg.max_member_mb}
    for name, value in positive.items():
        if not value > 0:
            raise DataError(f"data.{name} must be > 0, got {value}")
    for name in ("num_workers", "shuffle_buffer"):
        if getattr(cfg, name) < 0:
            raise DataError(f"data.{name} must be >= 0, got {getattr(cfg, name)}")
