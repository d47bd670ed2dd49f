"""Bad samples: the reasons they are dropped for, and their counts.

A reader never stops for bad input: it drops the sample (or the rest of an unreadable shard),
counts it by reason, and warns once per shard and reason. The counts travel with the next
batch as ``batch["skipped"]`` and end up in the trainer's ``data/skipped/<reason>`` metrics.
Whatever else goes wrong while one sample becomes tensors is that sample's skip too
(``SAMPLE_ERROR``), unless it goes wrong for sample after sample: then the reader itself is
broken, and it stops (``SampleFailures``).
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
BAD_KEY = "bad_key"
"""The sample's key (its member names without extension) is an absolute path or has a ``..``
component: extracted, the tar would write outside its folder (aurora.data.members.key_problem)."""
TOO_LARGE = "too_large"
"""A member the recipe reads is larger than ``data.max_member_mb``; it is not read."""
TOO_LONG = "too_long"
"""The audio header gives the clip more than ``data.max_seconds``; nothing is decoded."""
BAD_SAMPLE_RATE = "bad_sample_rate"
"""The audio header's sample rate is outside [1, MAX_SAMPLE_RATE] Hz, or resampling it to
``data.sample_rate`` needs too large a filter (aurora.data.audio.check_resample)."""
SAMPLE_ERROR = "sample_error"
"""Turning the sample into tensors raised something other than a BadSample: input that no rule
above describes yet, or a bug; the warning names the exception."""

MAX_ERRORS_IN_A_ROW = 10
"""Unexpected (non-BadSample) failures without a sample turned into tensors between them, after
which a reader stops: a programming error or a lost file system fails every sample, bad input
does not."""


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


class SampleFailures:
    """Tells a bad sample from a broken reader, for one reader (or one job's stream of samples).

    ``reason(exn)`` gives the ``(reason, detail)`` to count a sample's failure under: a
    BadSample's own, or SAMPLE_ERROR for any other Exception. The MAX_ERRORS_IN_A_ROW-th of
    those with no ``succeeded()`` call between them is raised instead (the original exception,
    whose traceback points at the bug). A BadSample neither adds to the streak nor ends it: the
    rules ran, but that says nothing about the code after them.
    """

    def __init__(self) -> None:
        self.in_a_row = 0

    def reason(self, exn: Exception) -> tuple[str, str]:
        if isinstance(exn, BadSample):
            return exn.reason, exn.detail
        self.in_a_row += 1
        if self.in_a_row >= MAX_ERRORS_IN_A_ROW:
            log.error("%d samples in a row failed with unexpected errors: the reader itself is broken, not the "
                      "data; stopping on the last one", self.in_a_row)
            raise exn
        return SAMPLE_ERROR, f"{type(exn).__name__}: {exn}"[:500]

    def succeeded(self) -> None:
        self.in_a_row = 0
