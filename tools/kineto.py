"""What a torch profiler (Kineto) trace of aurora's window says: the operators that took the
time, and how much communication ran with nothing to hide it.

Read from the trace file (``RUN/profile/rank{r}_steps{a}-{b}.json.gz``, Chrome trace events), as
Perfetto or TensorBoard would. torch's own summaries (``prof.key_averages()``) need the live
profiler, and the trace analysers on PyPI (HolisticTraceAnalysis) read GPU kernels only, so
this small reading is ours; it works on CPU traces and GPU ones alike.

- **Self time** of an operator: its duration less that of the operators nested in it on its
  thread (as ``key_averages`` counts ``self_cpu_time_total``). GPU kernels are never nested.
- **Communication**: NCCL kernels, and on a CPU the collectives' own events (``c10d::*``
  operators on the calling thread, ``gloo:*``/``nccl:*`` work on the backend's threads).
- **Compute**: every other kernel, and every other top-level operator (an operator nested in
  a collective is the collective's). aurora's ranges (``aurora/*``) are labels, neither.
- **Exposed communication**: the time some collective runs while no compute runs anywhere:
  the length of the union of communication less the union of compute. A thread blocked in a
  synchronous collective computes nothing, so that collective is exposed; an asynchronous one
  (FSDP's reduce-scatter) under the next layer's backward is hidden.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

COMM = re.compile(r"^(c10d::|gloo:|nccl:)|nccl", re.IGNORECASE)
OPERATOR_KINDS = ("cpu_op", "kernel")
COMM_KINDS = ("cpu_op", "kernel", "user_annotation")
STEP_RANGE = "aurora/step"


@dataclass
class TraceSummary:
    steps: int
    """aurora steps in the trace (its ``aurora/step`` ranges)."""
    step_s: float
    """Their total wall time."""
    top: list[tuple[str, str, int, float]]
    """(kind: cpu_op or kernel, name, calls, self seconds), most self time first."""
    comm_s: float
    """Time some collective ran (union over threads and streams)."""
    exposed_comm_s: float
    """Of that, the time no compute ran."""


def read_events(path: Path) -> list[dict]:
    """The complete (``"ph": "X"``) events of a trace file (``.json`` or ``.json.gz``)."""
    raw = Path(path).read_bytes()
    trace = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for begin, end in sorted(intervals):
        if out and begin <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([begin, end])
    return [(b, e) for b, e in out]


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(e - b for b, e in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of the intersection of two merged interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _nesting(events: list[dict]) -> tuple[dict[int, float], set[int]]:
    """Per operator event (by index): its self time (µs), and the indices of the top-level ones
    (nested in no other operator of their thread)."""
    by_thread: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        by_thread[e.get("pid"), e.get("tid")].append(i)
    self_us, top_level = {}, set()
    for indices in by_thread.values():
        indices.sort(key=lambda i: (events[i]["ts"], -events[i]["dur"]))
        stack: list[int] = []
        for i in indices:
            begin = events[i]["ts"]
            while stack and events[stack[-1]]["ts"] + events[stack[-1]]["dur"] <= begin:
                stack.pop()
            if stack:
                self_us[stack[-1]] -= events[i]["dur"]
            else:
                top_level.add(i)
            self_us[i] = events[i]["dur"]
            stack.append(i)
    return self_us, top_level


def summarize(path: Path, top: int = 10) -> TraceSummary:
    events = read_events(path)
    operators = [e for e in events if e.get("cat") in OPERATOR_KINDS]
    self_us, top_level = _nesting(operators)
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for i, e in enumerate(operators):
        entry = totals[e["cat"], e["name"]]
        entry[0] += 1
        entry[1] += self_us[i]
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    comm = _merged([(e["ts"], e["ts"] + e["dur"]) for e in events
                    if e.get("cat") in COMM_KINDS and COMM.search(e["name"])])
    compute = _merged([(e["ts"], e["ts"] + e["dur"]) for i, e in enumerate(operators)
                       if (i in top_level or e["cat"] == "kernel") and not COMM.search(e["name"])])
    steps = [e for e in events if e["name"] == STEP_RANGE]
    return TraceSummary(steps=len(steps), step_s=sum(e["dur"] for e in steps) / 1e6,
                        top=[(kind, name, int(calls), us / 1e6) for (kind, name), (calls, us) in ranked],
                        comm_s=_length(comm) / 1e6, exposed_comm_s=(_length(comm) - _overlap(comm, compute)) / 1e6)
