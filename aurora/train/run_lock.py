"""One job per run directory: the main rank holds an exclusive ``flock`` on RUN/.lock for the job's
life, and a second job on the same ``run.dir`` is refused, naming the holder's host and pid (which
the holder writes into the file).

The kernel drops a flock when the last descriptor of its open file is closed, so a holder that dies
in any way (SIGKILL, the OOM killer) leaves nothing to clean up: the main rank of torchrun's next
attempt takes the lock as soon as the old one is gone. Processes forked while the lock is held
(DataLoader workers) share that open file: they close their copy at once (``os.register_at_fork``),
or a worker outliving its dead parent for a moment would keep the lock from the restarted job.

On NFS, flock becomes a lock held by the server, which keeps the lock of a lost node until that
client's lease expires (NFSv4: 90 s by default); Lustre needs the ``flock`` mount option.
"""

import fcntl
import os
import socket
from pathlib import Path

import torch.distributed as dist

LOCK_FILE = ".lock"
_held: set[int] = set()
"""Descriptors of the locks this process holds."""


def _close_in_child() -> None:
    for fd in _held:
        os.close(fd)  # close, not unlock: an unlock would release the parent's lock too
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunDirBusy(RuntimeError):
    """Another job holds the run directory."""


class RunLock:
    """``with RunLock(run_dir, is_main):`` around a job, on every rank: the main rank creates
    ``run_dir`` and takes its lock, every rank learns whether it did (one broadcast), and all raise
    RunDirBusy together if not. The lock is released when the block ends, also on an error."""

    def __init__(self, run_dir: str | Path, is_main: bool):
        self.path = Path(run_dir) / LOCK_FILE
        self.is_main = is_main
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        refusal = self._acquire() if self.is_main else None
        if dist.is_initialized() and dist.get_world_size() > 1:
            shared = [refusal]
            dist.broadcast_object_list(shared, src=0)
            refusal = shared[0]
        if refusal:
            raise RunDirBusy(refusal)
        return self

    def _acquire(self) -> str | None:
        """Take the lock; or the reason it is not free."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "it has not written its name yet"
            os.close(fd)
            return (f"run.dir={self.path.parent} is in use by another job ({holder}): wait for it to end or "
                    f"stop it, or give this job another run.dir")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        _held.add(fd)
        return None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            _held.discard(self._fd)
            os.close(self._fd)
            self._fd = None
