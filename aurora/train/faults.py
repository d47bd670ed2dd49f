"""Test hooks that inject faults at named points of a run, read from the environment.

They are read only under the test switch ``AURORA_FAULT_INJECTION=1``; without it (every
production run) every hook is a no-op, whatever ``AURORA_FAULT_*`` variables the environment
holds. A malformed value is a one-line ValueError naming the variable. Step lists are ``"3,5"`` (optimizer steps 3
and 5 on every rank) or ``"3@1"`` (step 3, rank 1 only). Hooks that end or stall a process fire
only in a job's first attempt (torchrun's ``TORCHELASTIC_RESTART_COUNT`` is 0), so the restarted
job can show that it recovers.

=====================================  ==============================================================
``AURORA_FAULT_NAN_LOSS=STEPS``        the loss of those steps is NaN
``AURORA_FAULT_KILL=STEPS``            the rank SIGKILLs itself after those steps (first attempt)
``AURORA_FAULT_HANG=STEPS``            the rank stops making progress after those steps (first attempt)
``AURORA_FAULT_RAISE=POINTS``          ``RuntimeError`` at those named points (``metrics``, ``wandb``,
                                       ``eval``, ``samples``: work wrapped by ``aurora.train.nonfatal``),
                                       at every step or, as ``eval@4``, at one
``AURORA_FAULT_STEP_DELAY_S=S``        every step sleeps S seconds (a slower job, for signal tests)
``AURORA_FAULT_TRACE_DELAY_S=S``       writing a profiler trace takes S seconds longer (a large trace
                                       on a slow disk)
``AURORA_FAULT_DISK_QUOTA_BYTES=N``    checkpoint writes fail with ENOSPC once RUN/checkpoints would
                                       exceed N bytes (a full disk, seen at the write call)
``AURORA_FAULT_CRASH_BEFORE_LATEST=S`` the process dies after checkpoint S is renamed into place and
                                       before ``latest`` points at it (first attempt)
=====================================  ==============================================================
"""

import errno
import os
import signal
import time
from pathlib import Path

import torch


SWITCH = "AURORA_FAULT_INJECTION"
"""Set to 1 (tests, tools.chaos) to enable the hooks."""


def _setting(variable: str) -> str:
    """The value of a fault variable, or "" when unset or when faults are not enabled."""
    return os.environ.get(variable, "") if os.environ.get(SWITCH) == "1" else ""


def _first_attempt() -> bool:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def _number(variable: str, text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{variable}: {text!r} is not {what} (the formats are in aurora/train/faults.py)") from None


def _seconds(variable: str) -> float:
    return _number(variable, _setting(variable) or "0", float)


def _steps_for_rank(variable: str, rank: int) -> set[int]:
    steps = set()
    for item in filter(None, _setting(variable).split(",")):
        step, _, only_rank = item.partition("@")
        if not only_rank or _number(variable, only_rank, int) == rank:
            steps.add(_number(variable, step, int))
    return steps


def maybe_poison_loss(loss: torch.Tensor, step: int, rank: int) -> torch.Tensor:
    if step in _steps_for_rank("AURORA_FAULT_NAN_LOSS", rank):
        return loss * float("nan")
    return loss


def after_step(step: int, rank: int) -> None:
    """Faults that strike a rank between optimizer steps."""
    if delay := _seconds("AURORA_FAULT_STEP_DELAY_S"):
        time.sleep(delay)
    if not _first_attempt():
        return
    if step in _steps_for_rank("AURORA_FAULT_KILL", rank):
        os.kill(os.getpid(), signal.SIGKILL)
    if step in _steps_for_rank("AURORA_FAULT_HANG", rank):
        while True:  # a rank stuck outside any collective (a dead NFS mount, a deadlocked thread)
            time.sleep(1.0)


def delay_trace_write() -> None:
    time.sleep(_seconds("AURORA_FAULT_TRACE_DELAY_S"))


def maybe_raise(point: str, step: int) -> None:
    for item in _setting("AURORA_FAULT_RAISE").split(","):
        if item == point or item == f"{point}@{step}":
            raise RuntimeError(f"fault injected at {item} (AURORA_FAULT_RAISE)")


def check_disk_quota(checkpoints_dir: Path) -> None:
    """Raise ENOSPC, as a full disk would, when the checkpoints would outgrow the test quota."""
    quota = _setting("AURORA_FAULT_DISK_QUOTA_BYTES")
    if not quota:
        return
    sizes = {}
    for step_dir in checkpoints_dir.glob("step_*"):
        sizes[step_dir.name] = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file())
    complete = [size for name, size in sizes.items() if not name.endswith(".tmp")]
    one_more = max(complete, default=0)
    if sum(sizes.values()) + one_more > _number("AURORA_FAULT_DISK_QUOTA_BYTES", quota, int):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(checkpoints_dir))


def maybe_crash_before_latest(step: int) -> None:
    if _first_attempt() and step in _steps_for_rank("AURORA_FAULT_CRASH_BEFORE_LATEST", 0):
        os._exit(70)
