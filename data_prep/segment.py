"""Cutting long recordings into pieces at quiet points.

The rule, for a recording longer than ``max_frames``: the next piece starts where the last one
ended, and ends at a cut point chosen in the last ``SEARCH_FRACTION`` of the allowed length,
i.e. in ``[max(max_frames * (1 - SEARCH_FRACTION), min_frames), max_frames]`` frames from its
start. There the loudness is measured as the RMS (over channels) of ``RMS_WINDOW_SECONDS``
windows every ``RMS_HOP_SECONDS``; the windows within ``QUIET_DB`` of the quietest one are
"quiet", and the cut goes at the centre of the longest run of consecutive quiet windows (the
latest such run on a tie). A silent gap in the search region is thus cut in its middle; in
sound without pauses the cut falls at its quietest instant. The last piece is what remains
(at most ``max_frames``). Pieces are never longer than ``max_frames``; each is read only once,
so memory stays at about one piece however long the recording is.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

SEARCH_FRACTION = 0.5
RMS_WINDOW_SECONDS = 0.02
RMS_HOP_SECONDS = 0.01
QUIET_DB = 3.0


def quietest_point(audio: np.ndarray, rate: int, lo: int, hi: int) -> int:
    """The cut point in ``[lo, hi]`` (frame indices into ``audio``, ``[frames, channels]``): the
    centre of the longest run of windows within QUIET_DB of the quietest window there."""
    window = max(1, round(RMS_WINDOW_SECONDS * rate))
    hop = max(1, round(RMS_HOP_SECONDS * rate))
    half = window // 2
    first, last = max(lo - half, 0), min(hi - half, len(audio) - window)
    if last < first:  # region shorter than one window
        return hi
    starts = np.arange(first, last + 1, hop)
    power = np.square(audio.astype(np.float64)).mean(axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    rms = np.sqrt(np.maximum(cumulative[starts + window] - cumulative[starts], 0.0) / window)
    quiet = rms <= rms.min() * 10 ** (QUIET_DB / 20) + 1e-7
    # Runs of consecutive quiet windows: [run_start, run_end) in window indices.
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = run_ends - run_starts
    best = np.flatnonzero(lengths == lengths.max())[-1]
    centre_window = (run_starts[best] + run_ends[best] - 1) / 2
    cut = int(round(first + centre_window * hop)) + half
    return min(max(cut, lo), hi)


def split(read: Callable[[int], np.ndarray], rate: int, max_frames: int, min_frames: int = 0
          ) -> Iterator[tuple[int, np.ndarray]]:
    """``(offset, audio)`` pieces of a recording, cut by the module's rule.

    ``read(n)`` returns the next (up to) ``n`` frames as ``[frames, channels]`` (fewer at the
    end); ``offset`` is the piece's first frame relative to where reading began.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    lo = max(int(max_frames * (1 - SEARCH_FRACTION)), min(min_frames, max_frames), 1)
    offset = 0
    buffer = read(max_frames + 1)
    while len(buffer) > max_frames:
        cut = quietest_point(buffer, rate, lo, max_frames)
        yield offset, buffer[:cut]
        offset += cut
        rest = buffer[cut:]
        buffer = np.concatenate([rest, read(max_frames + 1 - len(rest))])
    if len(buffer):
        yield offset, buffer
