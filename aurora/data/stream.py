"""The resumable, infinite, per-rank batch stream.

One *reader* is one DataLoader worker of one rank (``world_size * max(num_workers, 1)``
readers in all). For each epoch every reader, independently and deterministically:

1. shuffles the shard list with the seed and epoch (the same order on every reader);
2. takes its part of the data:
   - *shard split* (at least as many shards as readers): every readers-th shard. Each tar is
     read once per epoch, but readers whose shards hold more samples have longer epochs;
   - *sample split* (fewer shards than readers): every shard, keeping every readers-th sample.
     Every reader gets a share, at the price of each reading all the bytes. Make at least as
     many shards as readers (ideally many more) for real runs;
3. streams the raw samples through a seeded shuffle buffer;
4. decodes, resamples and crops them (the crop from an RNG seeded by seed, epoch and key, so
   a sample's example never depends on workers or timing) and batches them in the worker.

Epochs follow each other without a break (a batch may span two), so every reader, hence
every rank, always has a next batch, however unevenly the data divides.

Exact resume: each batch carries its reader's *cursor* — the epoch and the number of raw
samples the reader had taken from its shuffle buffer in it. The consumer keeps the cursor of
the last batch it took from each worker. On resume a worker replays its raw stream and
shuffle buffer up to its cursor without decoding anything, and continues from there. Raw
positions rather than batch counts make this exact even when bad samples were dropped.
The DataLoader takes batches from its workers round-robin, so the worker that delivers
batch n is n mod num_workers; a resumed loader rotates worker roles to keep that order.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import random
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from omegaconf import MISSING
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from aurora.data.audio import AudioExamples
from aurora.data.config import DataConfig, DataError
from aurora.data.manifest import resolve_shards
from aurora.data.skips import BadSample, SkipCounter
from aurora.data.tars import read_shard
from aurora.data.tokens import TokenExamples

STATE_VERSION = 1


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The RNG for one sample's random choices (its crop) in one epoch."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng([seed % 2**64, epoch, digest])


class BatchStream(IterableDataset):
    """The batches of one rank; each DataLoader worker runs one reader of it."""

    def __init__(self, urls: list[str], expected: dict[str, int], examples, batch_size: int,
                 shuffle_buffer: int, seed: int, rank: int, world_size: int, num_workers: int):
        self.urls = urls
        self.expected = expected
        self.examples = examples
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.workers = max(num_workers, 1)
        self.readers = world_size * self.workers
        self.start_batches = 0
        """Batches the consumer had taken when this iteration started (sets worker roles)."""
        self.start_cursors = [(0, 0)] * self.workers
        """Per worker role: (epoch, raw position) to continue from."""

    def __iter__(self) -> Iterator[tuple[int, int, int, dict]]:
        info = get_worker_info()
        role = ((info.id if info else 0) + self.start_batches) % self.workers
        yield from self._batches(role, *self.start_cursors[role])

    def _raw_epoch(self, epoch: int, reader: int, counter: SkipCounter) -> Iterator[dict]:
        """This reader's raw samples of one epoch, shuffled."""
        order = list(self.urls)
        random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        if len(order) >= self.readers:
            raw = itertools.chain.from_iterable(
                read_shard(url, counter.add, self.expected.get(url)) for url in order[reader:: self.readers])
        else:
            raw = itertools.chain.from_iterable(
                # Every reader reads every shard here; only one of them reports its read errors.
                read_shard(url, counter.add if i % self.readers == reader else _ignore, self.expected.get(url))
                for i, url in enumerate(order))
            raw = itertools.islice(raw, reader, None, self.readers)
        rng = random.Random(f"samples:{self.seed}:{epoch}:{reader}")
        return wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(raw)

    def _batches(self, role: int, epoch: int, position: int) -> Iterator[tuple[int, int, int, dict]]:
        reader = self.rank * self.workers + role
        counter = SkipCounter()
        pending: list[dict] = []
        while True:
            raw = self._raw_epoch(epoch, reader, counter)
            # A cursor inside the epoch marks the end of a batch: the epoch has usable samples.
            productive = position > 0
            if position:
                # Replay up to the cursor without decoding; what the replay meets was counted before.
                collections.deque(itertools.islice(raw, position), maxlen=0)
                counter.take()
            for sample in raw:
                position += 1
                try:
                    pending.append(self.examples.decode(sample, sample_rng(self.seed, epoch, sample["__key__"])))
                except BadSample as bad:
                    counter.add(bad.reason, _shard_name(sample), bad.detail)
                    continue
                productive = True
                if len(pending) == self.batch_size:
                    batch = self.examples.collate(pending)
                    batch["skipped"] = counter.take()
                    pending = []
                    yield role, epoch, position, batch
            if not productive:
                raise DataError(
                    f"data reader {reader} (rank {self.rank}, worker {role}) got no usable sample in epoch "
                    f"{epoch} from {len(self.urls)} shard(s): the shards are unreadable (see the warnings "
                    f"above), or there are fewer samples than the {self.readers} readers "
                    f"(world_size x num_workers): use fewer data workers"
                )
            epoch, position = epoch + 1, 0


def _ignore(reason: str, shard: str, detail: str) -> None:
    pass


def _shard_name(sample: dict) -> str:
    return os.path.basename(sample["__url__"])


class ResumableLoader:
    """An infinite iterable of batches for one rank, with ``state_dict``/``load_state_dict``.

    Each ``iter()`` continues where the batches taken so far (or a loaded state) left off.
    """

    def __init__(self, stream: BatchStream, num_workers: int, kind: str):
        self.stream = stream
        self.num_workers = num_workers
        self.kind = kind
        self.batches = 0
        self.cursors = [(0, 0)] * stream.workers

    def __iter__(self) -> Iterator[dict]:
        self.stream.start_batches = self.batches
        self.stream.start_cursors = list(self.cursors)
        # Its own generator: creating worker seeds must not draw from the trainer's global RNG.
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.stream.seed))
        for role, epoch, position, batch in loader:
            self.cursors[role] = (epoch, position)
            self.batches += 1
            yield batch

    def _identity(self) -> dict:
        return {"kind": self.kind, "seed": self.stream.seed, "rank": self.stream.rank,
                "world_size": self.stream.world_size, "num_workers": self.num_workers}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, **self._identity(), "batches": self.batches,
                "workers": [{"epoch": e, "position": p} for e, p in self.cursors]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data loader state version {state.get('version')!r} is not supported "
                            f"(supports {STATE_VERSION})")
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if mismatched:
            details = ", ".join(f"{k}: saved {saved!r}, now {now!r}" for k, (saved, now) in mismatched.items())
            raise DataError(
                f"cannot resume the data stream exactly ({details}): resume with the same seed, world "
                f"size and data.num_workers as the run that saved the checkpoint (elastic resume is "
                f"not supported yet)"
            )
        self.batches = state["batches"]
        self.cursors = [(w["epoch"], w["position"]) for w in state["workers"]]


def build_loader(cfg: DataConfig, kind: str, rank: int, world_size: int, seed: int) -> ResumableLoader:
    """The batch stream of ``rank`` out of ``world_size`` for ``kind`` ("audio" or "tokens")."""
    _check(cfg, kind, rank, world_size)
    urls, manifest = resolve_shards(cfg.shards)
    expected = {}
    if manifest is not None:
        if manifest["kind"] != kind:
            raise DataError(f"data.shards {cfg.shards!r} holds {manifest['kind']} shards, but this task "
                            f"trains on {kind}: point data.shards at {kind} shards")
        counts = {shard["name"]: shard["samples"] for shard in manifest["shards"]}
        expected = {url: counts[os.path.basename(url)] for url in urls if os.path.basename(url) in counts}
    if kind == "audio":
        examples = AudioExamples(cfg.sample_rate, cfg.segment_seconds)
    else:
        if manifest is None or not isinstance(manifest.get("n_q"), int):
            raise DataError(f"token shards {cfg.shards!r} need a manifest.json with n_q (the number of "
                            f"codebooks): re-create them with the tokenizer")
        examples = TokenExamples(manifest["n_q"], cfg.context_frames)
    stream = BatchStream(urls, expected, examples, cfg.batch_size, cfg.shuffle_buffer, seed, rank,
                         world_size, cfg.num_workers)
    return ResumableLoader(stream, cfg.num_workers, kind)


def _check(cfg: DataConfig, kind: str, rank: int, world_size: int) -> None:
    if kind not in ("audio", "tokens"):
        raise DataError(f"data kind must be 'audio' or 'tokens', got {kind!r}")
    if cfg.shards == MISSING or not cfg.shards:
        raise DataError("data.shards is not set: give a shard directory (with manifest.json) or a brace "
                        "pattern, e.g. data.shards=data/shards")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    positive = {"batch_size": cfg.batch_size, "sample_rate": cfg.sample_rate,
                "segment_seconds": cfg.segment_seconds, "context_frames": cfg.context_frames}
    for name, value in positive.items():
        if not value > 0:
            raise DataError(f"data.{name} must be > 0, got {value}")
    for name in ("num_workers", "shuffle_buffer"):
        if getattr(cfg, name) < 0:
            raise DataError(f"data.{name} must be >= 0, got {getattr(cfg, name)}")
