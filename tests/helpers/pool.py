"""Persistent gloo worker pools: the ranks of a job, started once per test session, running
test bodies on every rank.

Launching a job per test pays for Python, ``import torch`` (and DeepSpeed) in every rank and in
the torchrun agent, and a rendezvous: 10-25 s on a 2-core machine, more than most tests compute.
A pool pays it once. This is the pattern of ``MultiProcContinuousTest`` in torch's
``torch/testing/_internal/common_distributed.py`` (a private API, so written here): the workers
join one process group over a ``FileStore`` and take tasks from the parent, one at a time.

- A task is a module-level function (imported by name in each worker, so test modules hold
  their own rank bodies) called as ``fn(*args, **kwargs)`` on every rank; each rank's return
  value, or its exception, comes back with what the rank printed (its file descriptors 1 and 2
  are captured, so C++ and child-process output are in it too).
- Each worker has the environment of a torchrun worker (``RANK``, ``LOCAL_RANK``,
  ``GROUP_RANK``, ``LOCAL_WORLD_SIZE``, ...), so ``aurora.distributed`` places it on its node,
  and ``init_distributed`` reuses the pool's process group. A task may add environment
  variables (fault hooks); the environment is restored after it, as is the working directory.
- A task that raises, times out or kills its worker may have left collectives unmatched: the
  pool is then shut down (the poison pill), and the next task starts a fresh one. (A CLI's exit
  code is a return value: ``tests.helpers.runs.run_main`` catches its ``SystemExit``.)

Jobs whose launcher is what a test is about (kill -9, SIGTERM, hangs, restarts, lost nodes)
still run as real launches: see ``tests.helpers.runs``.
"""

import os
import pickle
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT_S = 300.0
STOP = b""
"""The message that ends a worker."""
GRACE_S = 10.0
"""After one rank fails, how long the others get to report before the pool is killed."""


@dataclass
class RankResult:
    rank: int
    value: Any = None
    error: str | None = None
    """The traceback of the exception the rank raised, if it raised."""
    exception: BaseException | None = None
    """That exception, when it pickles."""
    output: str = ""
    """What the rank wrote to stdout and stderr during the task."""


class TaskFailed(AssertionError):
    def __init__(self, results: list[RankResult], why: str):
        self.results = results
        shown = "\n".join(f"--- rank {r.rank}: {'raised' if r.error else 'returned'}\n"
                          f"{(r.error or '')[-6000:]}{r.output[-3000:]}" for r in results)
        super().__init__(f"{why}\n{shown}")


class WorkerPool:
    """``world`` ranks, ``ranks_per_node`` per "node" (node-major, as torchrun and slurm number
    them). ``launcher_env=False`` gives ranks no launcher variables (a bare process)."""

    def __init__(self, world: int, ranks_per_node: int | None = None, launcher_env: bool = True):
        self.world = world
        self.ranks_per_node = ranks_per_node or world
        self.launcher_env = launcher_env
        self._workers: list[subprocess.Popen] = []
        self._conns = []
        self._tmp = None
        self._in_flight: Task | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"pool{self.world}_")
        authkey = secrets.token_bytes(16)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        store = Path(self._tmp.name) / "store"
        for rank in range(self.world):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu",
                   "AURORA_POOL_ADDRESS": f"{listener.address[0]}:{listener.address[1]}",
                   "AURORA_POOL_AUTHKEY": authkey.hex(), "AURORA_POOL_STORE": str(store),
                   "AURORA_POOL_RANK": str(rank), "AURORA_POOL_WORLD": str(self.world)}
            if self.launcher_env:
                env.update(RANK=str(rank), WORLD_SIZE=str(self.world), LOCAL_RANK=str(rank % self.ranks_per_node),
                           LOCAL_WORLD_SIZE=str(self.ranks_per_node), GROUP_RANK=str(rank // self.ranks_per_node),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT="29400", TORCHELASTIC_RESTART_COUNT="0")
            log = open(Path(self._tmp.name) / f"worker{rank}.log", "w")
            self._workers.append(subprocess.Popen([sys.executable, "-m", "tests.helpers.pool_worker"], cwd=REPO,
                                                  env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        conns = {}
        listener._listener._socket.settimeout(120.0)
        try:
            while len(conns) < self.world:
                conn = listener.accept()
                conns[conn.recv()] = conn
        except OSError as e:
            self._kill()
            raise RuntimeError(f"pool of {self.world}: workers did not start ({e}); see their logs") from e
        finally:
            listener.close()
        self._conns = [conns[r] for r in range(self.world)]
        for conn in self._conns:  # each reports once its process group is up
            if not conn.poll(120.0):
                self._kill()
                raise RuntimeError(f"pool of {self.world}: the process group did not form")
            conn.recv()

    def _kill(self) -> None:
        for worker in self._workers:
            if worker.poll() is None:
                worker.kill()
        for worker in self._workers:
            worker.wait()
        for conn in self._conns:
            conn.close()
        self._workers, self._conns = [], []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send_bytes(STOP)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for worker in self._workers:
            try:
                worker.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    # -- running ------------------------------------------------------------------------------
    def run(self, fn: Callable, *args, timeout: float = DEFAULT_TIMEOUT_S, env: dict[str, str] | None = None,
            check: bool = True, **kwargs) -> list[RankResult]:
        """``fn(*args, **kwargs)`` on every rank; one result per rank. With ``check`` a rank that
        raised fails the calling test (``TaskFailed``, with every rank's traceback and output)."""
        return self.submit(fn, *args, timeout=timeout, env=env, **kwargs).wait(check)

    def submit(self, fn: Callable, *args, timeout: float = DEFAULT_TIMEOUT_S, env: dict[str, str] | None = None,
               **kwargs) -> "Task":
        """Start ``fn`` on every rank and return at once (the caller goes on with work of its own,
        on the cores the pool leaves free); ``Task.wait`` collects. A pool runs one task at a
        time: the next submit first waits for this one."""
        if self._in_flight is not None:
            self._in_flight.wait(check=False)
        if not self._workers:
            self._start()
        task = pickle.dumps((fn.__module__, fn.__qualname__, args, kwargs, dict(env or {})))
        for conn in self._conns:
            conn.send_bytes(task)
        self._in_flight = Task(self, fn.__qualname__, timeout)
        return self._in_flight

    def _collect(self, task: "Task") -> list[RankResult]:
        results: list[RankResult | None] = [None] * self.world
        deadline = time.monotonic() + task.timeout
        while any(r is None for r in results):
            waiting = [rank for rank, r in enumerate(results) if r is None]
            if any(r is not None and r.error for r in results):
                deadline = min(deadline, time.monotonic() + GRACE_S)
            for rank in waiting:
                if self._conns[rank].poll(0.05):
                    try:
                        results[rank] = pickle.loads(self._conns[rank].recv_bytes())
                    except (EOFError, OSError):
                        results[rank] = RankResult(rank, error=f"worker {rank} died (exit {self._workers[rank].poll()})")
                elif self._workers[rank].poll() is not None:
                    results[rank] = RankResult(rank, error=f"worker {rank} died (exit {self._workers[rank].poll()})")
            if time.monotonic() > deadline:
                for rank in waiting:
                    if results[rank] is None:
                        results[rank] = RankResult(rank, error=f"no answer within {task.timeout:.0f} s (or "
                                                              f"{GRACE_S:.0f} s after another rank failed)")
        self._in_flight = None
        if any(r.error for r in results):
            self._kill()  # collectives may be left unmatched: the next task gets a fresh pool
        return results


class Task:
    """A task submitted to a pool (``WorkerPool.submit``)."""

    def __init__(self, pool: WorkerPool, name: str, timeout: float):
        self.pool, self.name, self.timeout = pool, name, timeout
        self._results: list[RankResult] | None = None

    def wait(self, check: bool = True) -> list[RankResult]:
        """Every rank's result (waiting for them the first time)."""
        if self._results is None:
            self._results = self.pool._collect(self)
        if check and any(r.error for r in self._results):
            raise TaskFailed(self._results, f"{self.name} failed on {self.pool.world} ranks")
        return self._results
