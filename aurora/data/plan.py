"""Which samples each reader reads in each epoch: pure index arithmetic, no I/O.

Epoch ``e`` puts the shards in a seeded order and numbers their samples one after the other:
the *global index* of a sample is its place in that concatenation. Every sample is read once
per epoch. The samples still to read in an epoch (all of them, unless a resume with another
number of readers left only part of it) are kept as sorted, disjoint ranges of global indices,
and split into ``readers`` contiguous shares of equal size (±1 sample): balanced however the
shards divide, and each share reads whole runs of a few shards, front to back.

*Elastic resume*: a run that stops part-way through an epoch knows, per reader, which of its
share it has delivered (see ``leftover``); the union of what no reader delivered becomes the
epoch's remaining ranges, split over the new number of readers. Nothing is lost and nothing
is repeated within the epoch, whatever the old and new numbers of readers.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

Ranges = list[tuple[int, int]]
"""Sorted, disjoint ``[start, stop)`` ranges of global indices."""


def normalize(ranges: Ranges) -> Ranges:
    """Sort and merge overlapping or touching ranges; drop empty ones."""
    merged: Ranges = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
        else:
            merged.append((start, stop))
    return merged


def size(ranges: Ranges) -> int:
    return sum(stop - start for start, stop in ranges)


def slice_ranges(ranges: Ranges, begin: int, end: int) -> Ranges:
    """The global indices at positions ``[begin, end)`` of the concatenated ranges."""
    out: Ranges = []
    offset = 0
    for start, stop in ranges:
        length = stop - start
        lo, hi = max(begin - offset, 0), min(end - offset, length)
        if lo < hi:
            out.append((start + lo, start + hi))
        offset += length
        if offset >= end:
            break
    return out


class Share:
    """One reader's samples in one epoch: position ``p`` (0 .. len-1) → global index."""

    def __init__(self, ranges: Ranges):
        self.ranges = ranges
        self._starts = []
        total = 0
        for start, stop in ranges:
            self._starts.append(total)
            total += stop - start
        self.length = total

    def __len__(self) -> int:
        return self.length

    def index(self, position: int) -> int:
        i = bisect.bisect_right(self._starts, position) - 1
        return self.ranges[i][0] + position - self._starts[i]

    def indices(self, positions) -> Ranges:
        """The global index ranges of a set of positions."""
        return normalize([(self.index(p), self.index(p) + 1) for p in positions])

    def tail(self, begin: int) -> Ranges:
        """The global index ranges of positions ``begin`` .. end."""
        return slice_ranges(self.ranges, begin, self.length)


@dataclass
class EpochPlan:
    """The shard order and reader shares of every epoch.

    ``counts`` are the samples per shard (in the order of the shard list), ``partial`` the
    remaining ranges of epochs that a resume left part-done (others are read whole).
    """

    counts: list[int]
    seed: int
    readers: int
    partial: dict[int, Ranges] = field(default_factory=dict)

    def __post_init__(self):
        self.total = sum(self.counts)
        self._cache: tuple[int, list[int], list[int]] | None = None

    def _layout(self, epoch: int) -> tuple[list[int], list[int]]:
        """(shard order, global index of each ordered shard's first sample) of an epoch."""
        if self._cache is None or self._cache[0] != epoch:
            order = list(range(len(self.counts)))
            random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
            starts, total = [], 0
            for shard in order:
                starts.append(total)
                total += self.counts[shard]
            self._cache = (epoch, order, starts)
        return self._cache[1], self._cache[2]

    def remaining(self, epoch: int) -> Ranges:
        return self.partial.get(epoch, [(0, self.total)])

    def share(self, epoch: int, reader: int) -> Share:
        ranges = self.remaining(epoch)
        n = size(ranges)
        return Share(slice_ranges(ranges, reader * n // self.readers, (reader + 1) * n // self.readers))

    def locate(self, epoch: int, index: int) -> tuple[int, int]:
        """(shard number in the shard list, sample number inside that shard) of a global index."""
        order, starts = self._layout(epoch)
        i = bisect.bisect_right(starts, index) - 1
        return order[i], index - starts[i]

    def segments(self, epoch: int, ranges: Ranges) -> list[tuple[int, int, int]]:
        """``(shard, first, stop)`` runs of samples, in order, covering the global ranges."""
        order, starts = self._layout(epoch)
        out = []
        for start, stop in ranges:
            while start < stop:
                i = bisect.bisect_right(starts, start) - 1
                shard_end = starts[i] + self.counts[order[i]]
                end = min(stop, shard_end)
                out.append((order[i], start - starts[i], end - starts[i]))
                start = end
        return out

    def state_dict(self) -> dict:
        return {"readers": self.readers, "partial": {e: list(map(list, r)) for e, r in self.partial.items()}}

    @staticmethod
    def partial_from_state(state: dict) -> dict[int, Ranges]:
        return {int(e): [tuple(r) for r in ranges] for e, ranges in state["partial"].items()}
