"""Spans and the step clock in one process: the phases of nested spans add up to the wall time
measured around them, ranges nest or fail, and the torch profiler sees them on a CPU."""

import time

import pytest
import torch

from aurora.perf.spans import TorchRanges, set_clock, set_ranges, span
from aurora.perf.step_clock import COMM, DATA, FORWARD, PHASES, StepClock, metric


def test_nested_phases_split_the_wall_time_without_counting_twice():
    """A comm span inside forward takes its time out of forward; a span without a phase (eval)
    keeps the enclosing one (other): every phase at least what it slept, and together exactly
    the time measured outside the clock."""
    clock = StepClock(torch.device("cpu"))
    set_clock(clock)
    try:
        before = time.perf_counter()
        clock.start()
        with span("data", DATA):
            time.sleep(0.02)
        with span("model/forward", FORWARD):
            time.sleep(0.01)
            with span("comm/units_all_reduce", COMM):
                time.sleep(0.02)
            time.sleep(0.01)
        with span("eval"):
            time.sleep(0.01)
        spent = clock.read()
        after = time.perf_counter()
    finally:
        set_clock(None)
    assert set(spent) == {metric(p) for p in PHASES}
    assert spent["time/data_s"] >= 0.02 and spent["time/comm_s"] >= 0.02 and spent["time/forward_s"] >= 0.02
    assert spent["time/other_s"] >= 0.01 and spent["time/backward_s"] == spent["time/checkpoint_s"] == 0
    assert sum(spent.values()) == pytest.approx(after - before, abs=1e-3)


def test_ranges_must_nest():
    ranges = TorchRanges()
    ranges.push("aurora/step")
    ranges.push("aurora/data")
    with pytest.raises(RuntimeError, match="'aurora/step' closed while 'aurora/data' is the innermost"):
        ranges.pop("aurora/step")


def test_the_torch_profiler_sees_the_ranges_on_a_cpu():
    """Outside CUDA a range is a ``record_function`` label only (a CPU build has no NVTX)."""
    ranges = TorchRanges()
    assert not ranges.nvtx or torch.cuda.is_available()
    set_ranges(ranges)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
            with span("step"), span("model/forward", FORWARD):
                torch.ones(3).add(1)
    finally:
        set_ranges(None)
    names = {event.key for event in prof.key_averages()}
    assert {"aurora/step", "aurora/model/forward"} <= names
