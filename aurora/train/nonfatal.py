"""Non-fatal wrapping: work whose failure must not stop a training run.

``with nonfatal("metrics"): ...`` (or ``@nonfatal("metrics")`` on a function) catches any
``Exception`` raised inside, prints its traceback once per kind with the rank and step, counts
it (the loop logs the counts over all ranks as ``errors/<kind>``) and carries on. It never
catches ``BaseException`` (KeyboardInterrupt, SystemExit): those still stop the process.

Only work that is local to one rank may be wrapped: if a wrapped block held a collective and
failed on one rank, the other ranks would wait in it forever. So the loop wraps:

- ``metrics``: writing metrics.jsonl and the progress bar (rank 0);
- ``wandb``: starting wandb and sending it metrics (a server or a network that went away);
- ``sample_keys``: the per-rank audit log of sample keys;
- ``checkpoint``: this rank's file writes of a save (the ranks then agree, by one all-reduce,
  whether the save is complete; a failed save is skipped everywhere, see checkpoint.py);
- ``eval`` and ``samples``: held-out loss and listening samples, computed on rank 0 alone
  from the checkpoint just written, with no collectives.

It never wraps the forward/backward, the optimizer step, gradient clipping or any collective:
a failure there is a failure of the job, and the elastic agent restarts it from a checkpoint.
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter
from contextlib import ContextDecorator


class NonFatal:
    """The counters and once-per-kind tracebacks of one process."""

    def __init__(self, rank: int):
        self.rank = rank
        self.step = 0
        """The loop keeps this at the last completed optimizer step, for the messages."""
        self.counts: Counter = Counter()

    def __call__(self, kind: str) -> "_Guard":
        return _Guard(self, kind)

    def record(self, kind: str, error: BaseException) -> None:
        """Count a failure handled elsewhere (e.g. a save the ranks agreed to skip)."""
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            trace = "".join(traceback.format_exception(error))
            print(f"aurora: rank {self.rank}, step {self.step}: {kind} failed; training continues "
                  f"(counted as errors/{kind}; only the first traceback of each kind is shown)\n{trace}",
                  file=sys.stderr, flush=True)


class _Guard(ContextDecorator):
    def __init__(self, owner: NonFatal, kind: str):
        self.owner = owner
        self.kind = kind

    def __enter__(self) -> "_Guard":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        self.owner.record(self.kind, exc)
        return True
