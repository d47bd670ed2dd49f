"""A shuffle buffer over positions, whose state after any number of draws can be recomputed.

webdataset's ``shuffle`` holds the samples themselves, so its state after n draws can only be
rebuilt by reading the n samples again. This one shuffles the *positions* ``0 .. n-1`` of a
reader's share: its draws depend on the seed and the counts alone, so a resume recomputes,
without any I/O, which positions were delivered, which sit in the buffer and how far the
reader had read; only the buffered samples are fetched again.
"""

from __future__ import annotations

import random


class PositionShuffle:
    """Takes positions in order into a buffer of ``size`` and hands out a random one of them."""

    def __init__(self, length: int, size: int, seed: str):
        self.length = length
        self.size = max(size, 1)
        self.rng = random.Random(seed)
        self.pulled = 0
        """Positions taken into the buffer so far (all of ``0 .. pulled-1``)."""
        self.buffer: list[int] = []
        self.drawn = 0

    def draw(self) -> int | None:
        """The next position, or None once all are out."""
        while len(self.buffer) < self.size and self.pulled < self.length:
            self.buffer.append(self.pulled)
            self.pulled += 1
        if not self.buffer:
            return None
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        self.drawn += 1
        return self.buffer.pop()

    def skip(self, draws: int) -> None:
        """Make ``draws`` draws without looking at them (replaying a resumed reader)."""
        for _ in range(draws):
            if self.draw() is None:
                raise ValueError(f"cannot replay {draws} draws from a share of {self.length}")
