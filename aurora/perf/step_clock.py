"""The step-time breakdown: where one optimizer step's wall time went, phase by phase.

The clock keeps marks: each span with a phase (``aurora.perf.spans``) marks when it starts and
when it ends, and the time between two marks belongs to the phase innermost at the time (the
enclosing span's again after a nested one ends; ``other`` outside every span). So the phases
always sum to the span from the first mark to the last, whatever nests in what.

On a GPU a mark is a CUDA event recorded on the current stream: the loop is never made to
wait for the GPU per phase, and the events are read once, at a logged step, after the last one
has completed (the GPU time between them, which the step's host synchronisations make close to
wall time). On a CPU a mark is ``time.perf_counter()``.
"""

import time

import torch

DATA, FORWARD, BACKWARD, OPTIMIZER, COMM, CHECKPOINT, OTHER = (
    "data", "forward", "backward", "optimizer", "comm", "checkpoint", "other")
PHASES = (DATA, FORWARD, BACKWARD, OPTIMIZER, COMM, CHECKPOINT, OTHER)
"""``comm``: aurora's explicit collectives. An engine's own (DDP's gradient buckets, FSDP's
gathers and reduce-scatters) overlap compute and count in forward and backward; a Kineto trace
shows how much of them is exposed (``tools.profile_report``)."""


def metric(phase: str) -> str:
    """The metrics.jsonl key of a phase: ``time/<phase>_s``."""
    return f"time/{phase}_s"


class StepClock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []
        """(the phase from this mark on, its time: seconds or a CUDA event)."""
        self._stack: list[str] = []

    def start(self) -> None:
        """A new step begins (the marks of the last one are dropped, read or not)."""
        self._marks.clear()
        self._stack[:] = [OTHER]
        self._mark(OTHER)

    def enter(self, phase: str) -> None:
        if self._stack:  # marks only inside a step
            self._stack.append(phase)
            self._mark(phase)

    def leave(self) -> None:
        if len(self._stack) > 1:
            self._stack.pop()
            self._mark(self._stack[-1])

    def _mark(self, phase: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((phase, event))
        else:
            self._marks.append((phase, time.perf_counter()))

    def read(self) -> dict[str, float]:
        """Seconds of every phase since ``start`` (``time/<phase>_s``, each of ``PHASES``); on a
        GPU this waits for the last mark's event."""
        self._mark(OTHER)
        if self.cuda:
            self._marks[-1][1].synchronize()
            first = self._marks[0][1]
            times = [first.elapsed_time(event) / 1e3 for _, event in self._marks]
        else:
            times = [t for _, t in self._marks]
        spent = dict.fromkeys(PHASES, 0.0)
        for (phase, _), begin, end in zip(self._marks, times, times[1:]):
            spent[phase] += end - begin
        return {metric(phase): seconds for phase, seconds in spent.items()}
