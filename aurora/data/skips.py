"""Bad samples: the reasons they are dropped for, and their counts.

A reader never stops for bad input: it drops the sample (or the rest of an unreadable shard),
counts it by reason, and warns once per shard and reason. The counts travel with the next
batch as ``batch["skipped"]`` and end up in the trainer's ``data/skipped/<reason>`` metrics.
"""

import logging
from collections import Counter

log = logging.getLogger(__name__)

READ_ERROR = "read_error"
"""The tar could not be read (truncated, corrupt, missing): the rest of that shard is lost."""
MISSING_MEMBER = "missing_member"
"""A sample lacks a member it needs (e.g. a ``.json`` without its ``.flac``)."""
BAD_JSON = "bad_json"
"""The ``.json`` member is not a UTF-8 JSON object with a string ``text`` and positive numbers
for ``duration`` / ``frames`` (aurora.data.members.metadata)."""
DECODE_ERROR = "decode_error"
"""The audio member does not decode (aurora.data.audio), or the codes member does not load as
int16 ``[n_q, T]`` with codes in ``[0, codebook_size)`` (aurora.data.tokens.load_codes)."""
EMPTY_AUDIO = "empty_audio"
"""The audio member decodes to zero samples."""
EMPTY_CODES = "empty_codes"
"""The codes member has zero frames."""
LONG_PAIR = "long_pair"
"""A preference pair with a side longer than ``data.context_frames`` (pairs are never cropped)."""
IDENTICAL_PAIR = "identical_pair"
"""A preference pair whose chosen and rejected codes are the same."""


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SkipCounter:
    """Counts dropped samples by reason until taken; warns once per (shard, reason)."""

    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self._warned: set[tuple[str, str]] = set()

    def add(self, reason: str, shard: str, detail: str) -> None:
        self._counts[reason] += 1
        if (shard, reason) not in self._warned:
            self._warned.add((shard, reason))
            log.warning("%s: skipped bad data (%s: %s); more of this kind in this shard are only counted, "
                        "as data/skipped/%s", shard, reason, detail, reason)

    def take(self) -> dict[str, int]:
        """The counts since the last take, then reset."""
        counts, self._counts = dict(self._counts), Counter()
        return counts
