"""The profiling window (``profile.*``): steps ``start_step``..``end_step`` on the ranks of
``profile.ranks`` (all when empty), between steps, from the loop.

- ``mode=torch``: ``torch.profiler`` records the window (CPU, and CUDA where there is one) and
  the trace is written to ``RUN/profile/rank{r}_steps{a}-{b}.json.gz`` by a background thread,
  so the other ranks never wait on a profiled rank's file (Megatron's profiled ranks wrote their
  traces inline while the others sat in the next collective until NCCL timed out).
- ``mode=nsys``: ``cudaProfilerStart`` at the window's first step and ``cudaProfilerStop``
  after its last, for ``nsys profile --capture-range=cudaProfilerApi`` (``launch/nsys.sh``).
- In the window aurora's ranges are on (``aurora.perf.spans``): NVTX for nsys, labels in the
  Kineto trace; ``profile.nvtx=true`` keeps them on for the whole run.
- ``memory=true``: a CUDA memory snapshot, recorded from the start of the run and dumped at the
  window's end and on an out-of-memory error. A CPU rank has none (it says so once).
"""

import os
import sys
import threading
from pathlib import Path

import torch

from aurora.config import ConfigError
from aurora.config.schema import ProfileConfig, ProfileMode
from aurora.distributed import DistEnv
from aurora.perf.spans import TorchRanges, set_ranges
from aurora.train import faults

MEMORY_HISTORY_ENTRIES = 100_000
"""Allocation events a CUDA memory snapshot keeps (torchtitan keeps 1e6; each is ~1 KiB with its stack)."""


def check_profile(cfg: ProfileConfig, env: DistEnv) -> None:
    """Refuse (ConfigError, one line) what the job's world and device cannot profile."""
    outside = [r for r in cfg.ranks if not 0 <= r < env.world_size]
    if outside:
        raise ConfigError(f"config: profile.ranks={cfg.ranks} names rank(s) {outside} outside this job's "
                          f"{env.world_size} rank(s) (0-{env.world_size - 1}): list ranks of the job, or none for all")
    if cfg.mode == ProfileMode.nsys and env.device.type != "cuda":
        raise ConfigError(f"config: profile.mode=nsys captures CUDA work (cudaProfilerStart/Stop), but this job "
                          f"runs on {env.device.type}: use profile.mode=torch for a trace on the CPU, or run on GPUs")


def trace_name(rank: int, first: int, last: int) -> str:
    return f"rank{rank}_steps{first}-{last}"


class ProfileWindow:
    def __init__(self, cfg: ProfileConfig, env: DistEnv, run_dir: Path):
        check_profile(cfg, env)
        self.cfg = cfg
        self.rank = env.rank
        self.dir = Path(run_dir) / "profile"
        profiled = not cfg.ranks or env.rank in cfg.ranks
        self.mode = cfg.mode if profiled else ProfileMode.off
        self.memory = cfg.memory and profiled and env.device.type == "cuda"
        self.first: int | None = None
        """The first step of the window, while it is open."""
        self.done = False
        self._profiler: torch.profiler.profile | None = None
        self._writers: list[threading.Thread] = []
        self._ranges = False
        if cfg.memory and profiled and not self.memory and env.is_main:
            print("aurora: profile.memory=true: this job runs on the CPU, which has no CUDA memory snapshot; "
                  + ("the torch trace records allocations" if cfg.mode == ProfileMode.torch else "nothing is recorded"),
                  file=sys.stderr, flush=True)
        if self.memory:
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)

    def _set_ranges(self, on: bool) -> None:
        if on != self._ranges:
            set_ranges(TorchRanges() if on else None)
            self._ranges = on

    def before_step(self, step: int) -> None:
        """Open the window before step ``step`` (1-based) if it starts there (or a resume landed
        inside it); with ``profile.nvtx`` the ranges are on at every step."""
        if self.cfg.nvtx:
            self._set_ranges(True)
        if self.done or self.first is not None or not self.cfg.start_step <= step <= self.cfg.end_step:
            return
        if self.mode == ProfileMode.off and not self.memory:
            return
        self.first = step
        self.dir.mkdir(parents=True, exist_ok=True)
        self._set_ranges(True)
        if self.mode == ProfileMode.torch:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities, record_shapes=self.cfg.record_shapes,
                                                    with_stack=self.cfg.with_stack, profile_memory=self.cfg.memory,
                                                    acc_events=True)  # one cycle: the window
            self._profiler.start()
        elif self.mode == ProfileMode.nsys:
            torch.cuda.profiler.start()

    def after_step(self, step: int) -> None:
        """Close the window after its last step."""
        if self.first is not None and step >= self.cfg.end_step:
            self._finish(step)

    def close(self, step: int) -> None:
        """At the end of the run, after step ``step``: close a window it ended inside (the trace
        is named by the steps it holds), turn the ranges off, and wait for the traces."""
        if self.first is not None:
            self._finish(step)
        self._set_ranges(False)
        for writer in self._writers:
            writer.join()

    def on_oom(self, step: int) -> None:
        """Dump the memory snapshot of an out-of-memory error in step ``step``."""
        if self.memory:
            self._dump_memory(f"rank{self.rank}_oom_step{step}")

    def _finish(self, last: int) -> None:
        first, self.first, self.done = self.first, None, True
        name = trace_name(self.rank, first, last)
        self._set_ranges(self.cfg.nvtx)
        if self._profiler is not None:
            profiler, self._profiler = self._profiler, None
            profiler.stop()
            writer = threading.Thread(target=self._write_trace, args=(profiler, self.dir / f"{name}.json.gz"),
                                      name="aurora-trace-writer")
            writer.start()
            self._writers.append(writer)
        elif self.mode == ProfileMode.nsys:
            torch.cuda.profiler.stop()
        if self.memory:
            self._dump_memory(name)

    @staticmethod
    def _write_trace(profiler: torch.profiler.profile, path: Path) -> None:
        """Write the trace under a hidden name, then rename it: a file of that name is complete."""
        part = path.with_name("." + path.name)
        profiler.export_chrome_trace(str(part))
        faults.delay_trace_write()
        os.replace(part, path)
        print(f"aurora: wrote the torch profiler trace {path}", file=sys.stderr, flush=True)

    def _dump_memory(self, name: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{name}_memory.pickle"
        torch.cuda.memory._dump_snapshot(str(path))
        print(f"aurora: wrote the CUDA memory snapshot {path} (open it at https://pytorch.org/memory_viz)",
              file=sys.stderr, flush=True)
