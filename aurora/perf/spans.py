"""Named spans of a training step, the one call-site API of profiling: ``with span(name, phase)``.

A span is two things at once:

- a **range**, named ``aurora/<name>``, when ranges are on (``set_ranges``): an NVTX range for
  Nsight Systems (when CUDA is there; ``torch.cuda.nvtx`` on a CPU-only build has no NVTX library
  and raises) and a ``record_function`` label, which the torch profiler's Kineto traces show on
  CPU and GPU alike;
- a **phase** of the step clock (``aurora.perf.step_clock``), when one is installed
  (``set_clock``) and the span has a phase: the step-time breakdown in metrics.jsonl.

Names, the same on every engine and recipe (``<part>`` is ``model`` or an extra part's name, such
as ``discriminator``):

- ``step`` (the whole step, its checkpoint and evaluation included), ``data``;
- ``<part>/forward``, ``<part>/backward``, ``<part>/optimizer`` (clip, step, LR schedule),
  ``<part>/all_reduce`` (the part's one collective per step: skip decision, stop, metrics);
- ``comm/units_all_reduce`` (the step's valid units), ``comm/hierarchical_sync``,
  ``comm/dead_code_reset``;
- ``checkpoint/save``, ``checkpoint/wait``, ``checkpoint/finalise``, ``eval``.

Off (the default), a span costs two global reads and a clock mark; ranges are turned on only
between steps, so every range opened is closed. A range closed out of order raises, naming both
(as Megatron's ``nvtx_range_pop`` does): a mis-nested range makes an Nsight timeline lie.
"""

from typing import Protocol

import torch

PREFIX = "aurora/"


class Ranges(Protocol):
    """Where ranges go: ``push`` on entering a span, ``pop`` (the same name) on leaving it."""

    def push(self, name: str) -> None: ...

    def pop(self, name: str) -> None: ...


class TorchRanges:
    """NVTX ranges (with CUDA) and torch profiler labels."""

    def __init__(self):
        self.nvtx = torch.cuda.is_available()
        self._open: list[tuple[str, torch.autograd.profiler.record_function]] = []

    def push(self, name: str) -> None:
        label = torch.autograd.profiler.record_function(name)
        label.__enter__()
        self._open.append((name, label))
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)

    def pop(self, name: str) -> None:
        if not self._open or self._open[-1][0] != name:
            raise RuntimeError(f"range {name!r} closed while {self._open[-1][0] if self._open else 'none'!r} is the "
                               f"innermost open one: spans must nest")
        _, label = self._open.pop()
        if self.nvtx:
            torch.cuda.nvtx.range_pop()
        label.__exit__(None, None, None)


_ranges: Ranges | None = None
_clock = None


def set_ranges(ranges: Ranges | None) -> Ranges | None:
    """Send ranges to ``ranges`` (None: no ranges); returns what was there. Between spans only."""
    global _ranges
    previous, _ranges = _ranges, ranges
    return previous


def set_clock(clock) -> object:
    """Mark phases on ``clock`` (a ``StepClock``; None: none); returns what was there."""
    global _clock
    previous, _clock = _clock, clock
    return previous


class span:
    """``with span("model/forward", FORWARD): ...``; ``phase=None`` keeps the enclosing phase."""

    __slots__ = ("name", "phase")

    def __init__(self, name: str, phase: str | None = None):
        self.name = PREFIX + name
        self.phase = phase

    def __enter__(self) -> "span":
        if self.phase is not None and _clock is not None:
            _clock.enter(self.phase)
        if _ranges is not None:
            _ranges.push(self.name)
        return self

    def __exit__(self, *exc) -> None:
        if _ranges is not None:
            _ranges.pop(self.name)
        if self.phase is not None and _clock is not None:
            _clock.leave()
