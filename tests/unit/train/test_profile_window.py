"""The profiling window's life in one process, step by step as the loop drives it: ranges on
only where they should be, the torch profiler's trace named by the steps it holds (also when a
resume lands inside the window), and nothing left running after the run."""

import gzip
import json

import torch

from aurora.config.schema import ProfileConfig, ProfileMode
from aurora.distributed import DistEnv
from aurora.perf.spans import TorchRanges, set_ranges, span
from aurora.train.profiling import ProfileWindow

ONE_CPU_RANK = DistEnv(0, 1, 0, 1, 0, 1, torch.device("cpu"), "gloo")


def ranges_now():
    current = set_ranges(None)
    set_ranges(current)
    return current


def drive(window: ProfileWindow, first: int, last: int) -> list[bool]:
    """Steps ``first``..``last`` as the loop takes them; whether ranges were on in each."""
    on = []
    for step in range(first, last + 1):
        window.before_step(step)
        on.append(isinstance(ranges_now(), TorchRanges))
        with span("step"):
            torch.ones(4).mul(2)
        window.after_step(step)
    window.close(last)
    return on


def test_a_torch_window_profiles_its_steps_only(tmp_path):
    window = ProfileWindow(ProfileConfig(mode=ProfileMode.torch, start_step=2, end_step=3), ONE_CPU_RANK, tmp_path)
    assert drive(window, 1, 5) == [False, True, True, False, False] and ranges_now() is None
    events = json.loads(gzip.decompress((tmp_path / "profile" / "rank0_steps2-3.json.gz").read_bytes()))["traceEvents"]
    assert sum(e.get("name") == "aurora/step" for e in events) == 2


def test_a_resume_inside_the_window_and_a_run_ending_in_it(tmp_path):
    """Resumed at step 3 of a 2-5 window, the run ends after step 4: one trace of steps 3-4."""
    window = ProfileWindow(ProfileConfig(mode=ProfileMode.torch, start_step=2, end_step=5), ONE_CPU_RANK, tmp_path)
    assert drive(window, 3, 4) == [True, True]
    assert [p.name for p in (tmp_path / "profile").iterdir()] == ["rank0_steps3-4.json.gz"]


def test_nvtx_keeps_the_ranges_on_at_every_step_without_a_profiler(tmp_path):
    window = ProfileWindow(ProfileConfig(nvtx=True), ONE_CPU_RANK, tmp_path)
    assert drive(window, 1, 3) == [True, True, True] and ranges_now() is None
    assert not (tmp_path / "profile").exists()


def test_memory_on_a_cpu_says_what_it_records_and_goes_on(tmp_path, capsys):
    """A CPU rank has no CUDA memory snapshot: one line says so; the torch trace then holds the
    allocations (``profile_memory``)."""
    window = ProfileWindow(ProfileConfig(mode=ProfileMode.torch, start_step=1, end_step=1, memory=True), ONE_CPU_RANK,
                           tmp_path)
    assert "has no CUDA memory snapshot; the torch trace records allocations" in capsys.readouterr().err
    drive(window, 1, 1)
    events = json.loads(gzip.decompress((tmp_path / "profile" / "rank0_steps1-1.json.gz").read_bytes()))["traceEvents"]
    assert any(e.get("name") == "[memory]" for e in events)
    assert not list((tmp_path / "profile").glob("*.pickle"))
