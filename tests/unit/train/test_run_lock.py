"""One job per run directory (aurora/train/run_lock.py)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from aurora.train.run_lock import RunDirBusy, RunLock
from tests.helpers.runs import REPO


def test_a_second_job_is_refused_naming_the_holder_and_the_lock_is_released_when_the_job_ends(tmp_path):
    run = tmp_path / "run"
    with RunLock(run, is_main=True):
        holder = rf"\(host {socket.gethostname()}, pid {os.getpid()}\)"
        with pytest.raises(RunDirBusy, match=rf"^run.dir={run} is in use by another job {holder}: wait"):
            with RunLock(run, is_main=True):
                pass
    with pytest.raises(KeyError):
        with RunLock(run, is_main=True):  # free again: the block above ended
            raise KeyError("the job failed")
    with RunLock(run, is_main=True):  # and released on the error too
        pass


_HOLDER = """
import os, signal, sys, time
from aurora.train.run_lock import RunLock
RunLock(sys.argv[1], is_main=True).__enter__()
child = os.fork()  # a DataLoader worker
if child == 0:
    for fd in (1, 2):  # the test waits for the end of the holder's output
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_lock_of_a_killed_main_rank_is_free_while_its_forked_workers_live(tmp_path):
    """What a torchrun restart needs: the new attempt's main rank takes the lock at once."""
    holder = subprocess.run([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    worker = int(holder.stdout)
    try:
        os.kill(worker, 0)  # still alive, with its copy of the descriptor closed
        with RunLock(tmp_path, is_main=True):
            pass
    finally:
        os.kill(worker, signal.SIGKILL)
