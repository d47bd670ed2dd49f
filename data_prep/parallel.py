"""An ordered parallel map over worker processes that survives a worker dying.

``ordered_map(fn, items, workers, on_crash)`` yields ``fn(item)`` for each item, in input
order, computing up to ``workers * IN_FLIGHT_PER_WORKER`` items ahead (so memory stays bounded
when the consumer is slow). ``workers == 1`` runs in this process.

Workers come from a ``forkserver`` (``spawn`` where there is none): a clean process that
imported ``preload`` once, never a fork of this one, whose OpenMP threads a forked child could
not use. Each worker runs torch single-threaded, so results do not depend on the worker count.

If a worker dies (a crash inside a decoder, the out-of-memory killer), ``multiprocessing.Pool``
would wait forever for its result; here the items in flight are redone one at a time in fresh
workers, and the one that kills its worker again yields ``on_crash(item)`` instead.

Test hook: ``AURORA_FAULT_WORKER_CRASH=N`` makes the worker handling item ``N`` (0-based) die.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

import torch

IN_FLIGHT_PER_WORKER = 4
SHUTDOWN_GRACE_S = 5.0  # for idle workers to see the executor's stop sentinel and exit
FAULT_ENV = "AURORA_FAULT_WORKER_CRASH"

T = TypeVar("T")
R = TypeVar("R")

_crash_at: int | None = None


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, on_crash: Callable[[T], R],
                preload: tuple[str, ...] = ()) -> Iterator[R]:
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the workers: the same arithmetic whatever the worker count
        try:
            yield from map(fn, items)
        finally:
            torch.set_num_threads(threads)
        return
    fault = os.environ.get(FAULT_ENV)
    pool = _Pool(workers, preload, int(fault) if fault else None)
    pending: deque = deque()
    numbered = enumerate(items)
    try:
        while True:
            while len(pending) < workers * IN_FLIGHT_PER_WORKER:
                nxt = next(numbered, None)
                if nxt is None:
                    break
                pending.append((*nxt, pool.submit(fn, *nxt)))
            if not pending:
                return
            index, item, future = pending[0]
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.restart(1)
                lost = list(pending)
                pending.clear()
                for i, it, done in lost:  # one at a time: the item that kills its worker is the culprit
                    if done.done() and not done.cancelled() and done.exception() is None:
                        yield done.result()
                        continue
                    try:
                        result = pool.submit(fn, i, it).result()
                    except BrokenProcessPool:
                        pool.restart(1)
                        result = on_crash(it)
                    yield result
                pool.restart(workers)
                continue
            pending.popleft()
            yield result
    finally:
        pool.shutdown()


class _Pool:
    """A ProcessPoolExecutor that can be replaced after a worker died; checks that workers start."""

    def __init__(self, workers: int, preload: tuple[str, ...], crash_at: int | None):
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self.context = multiprocessing.get_context(method)
        if method == "forkserver" and preload:
            self.context.set_forkserver_preload(list(preload))
        self.crash_at = crash_at
        self.executor = None
        self.restart(workers)

    def restart(self, workers: int) -> None:
        self.shutdown()
        self.executor = ProcessPoolExecutor(workers, mp_context=self.context, initializer=_init_worker,
                                            initargs=(self.crash_at,))
        try:
            self.executor.submit(_ping).result()
        except BrokenProcessPool:
            self.shutdown()
            raise RuntimeError("worker processes cannot start (is the main module importable? e.g. not a script "
                               "read from stdin); run with 1 worker to see the error") from None

    def submit(self, fn, index, item) -> Future:
        """The future of ``fn(item)``; if a worker already died, one that raises BrokenProcessPool."""
        try:
            return self.executor.submit(_call, fn, index, item)
        except BrokenProcessPool as broken:  # the pool broke between two submits: handled like a result
            future = Future()
            future.set_exception(broken)
            return future

    def shutdown(self) -> None:
        """Stop the workers without waiting on the executor: after a worker died, Python 3.11's
        ``shutdown(wait=True)`` can wait forever on a surviving worker blocked on its task queue.
        The worker processes are read from the executor's ``_processes`` (Python 3.14 has a public
        ``kill_workers()`` for this); every result has been collected or abandoned by now."""
        if self.executor is None:
            return
        processes = list((self.executor._processes or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=SHUTDOWN_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        self.executor = None


def _init_worker(crash_at: int | None) -> None:
    global _crash_at
    _crash_at = crash_at
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process: it stops the workers


def _ping() -> None:
    return None


def _call(fn, index, item):
    if index == _crash_at:
        os._exit(70)
    return fn(item)

