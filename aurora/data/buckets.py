"""Duration buckets for ``data.batching=dynamic``.

Bucket ``k`` holds clips whose (cropped) length lies in ``(longest / (1+w)^(k+1), longest /
(1+w)^k]``, ``w`` being ``data.bucket_width``: clips batched together differ in length by at
most that fraction, so padding stays below it. A bucket's batch is full at
``floor(max_seconds_per_batch / upper bound)`` clips, so a batch never exceeds the budget of
padded seconds. Clips reach the buckets already shuffled by the reader's shuffle buffer, and
each bucket keeps their arrival order.
"""

from __future__ import annotations

import math

from aurora.data.config import DataError

SHORTEST_BUCKET_SECONDS = 0.05
"""Clips shorter than this share the last bucket (their padding is negligible in seconds)."""


class DurationBuckets:
    def __init__(self, longest: float, max_seconds_per_batch: float, width: float):
        if not width > 0:
            raise DataError(f"data.bucket_width must be > 0, got {width}")
        if max_seconds_per_batch < longest:
            raise DataError(
                f"data.max_seconds_per_batch={max_seconds_per_batch} is less than the longest example "
                f"({longest:g} s): raise it, or lower data.segment_seconds / data.context_frames")
        self.longest = longest
        self.budget = max_seconds_per_batch
        self.ratio = 1.0 + width
        self.last = max(0, math.ceil(math.log(longest / SHORTEST_BUCKET_SECONDS, self.ratio)) - 1)

    def bucket(self, seconds: float) -> int:
        if seconds >= self.longest:
            return 0
        k = int(math.log(self.longest / max(seconds, 1e-9), self.ratio))
        # Float rounding at a bound: keep the invariant seconds <= upper(k).
        while k > 0 and seconds > self.upper(k):
            k -= 1
        return min(k, self.last)

    def upper(self, bucket: int) -> float:
        return self.longest / self.ratio ** bucket

    def capacity(self, bucket: int) -> int:
        return max(1, int(self.budget // self.upper(bucket)))
