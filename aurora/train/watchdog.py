"""Hang watchdog: a rank that completes no step for ``trainer.hang_timeout_s`` dumps the stack of
every thread (faulthandler) under a line naming the rank and step, then exits with
``HANG_EXIT_CODE``; torchrun sees a failed worker, stops the group and restarts it from the
latest checkpoint.

The clock starts at the first step a (re)started process completes: the first step also starts
the data loader's workers and compiles or warms up whatever runs lazily, which takes as long as
it takes on a loaded machine. A hang before it ends in the process group's timeout.

A Python thread does the waiting so the message can carry the rank; it needs the GIL, so for a
hang inside C code that holds it faulthandler's own C timer fires as a backstop at twice the
timeout (it dumps and exits without the GIL).

Every rank runs one: when one rank hangs outside a collective, the others block in the next
collective and their watchdogs fire too, so the logs show where each rank was. The process
group's collective timeout (``dist.timeout_s``) must be longer, so that the watchdog, with its
stacks, speaks first (checked when the config is loaded). Before it exits it dumps torch's
flight recorder, the rank's last collectives (``aurora.distributed.flight_recorder``), when the
launcher turned the recorder on.
"""

import faulthandler
import os
import sys
import threading
import time

from aurora.distributed import flight_recorder

HANG_EXIT_CODE = 124


class HangWatchdog:
    """``with HangWatchdog(timeout_s, rank) as w: ... w.beat(step)``; ``timeout_s=None`` is off."""

    def __init__(self, timeout_s: float | None, rank: int):
        self.timeout_s = timeout_s
        self.rank = rank
        self.step = 0
        self._last_beat = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="aurora-hang-watchdog", daemon=True)

    def __enter__(self) -> "HangWatchdog":
        return self

    def __exit__(self, *exc) -> None:
        if self.timeout_s is not None:
            self._stopped.set()
            faulthandler.cancel_dump_traceback_later()

    def beat(self, step: int) -> None:
        """Progress was made (a step or a checkpoint finished): restart the clock (the first beat
        starts it)."""
        self.step = step
        self._last_beat = time.monotonic()
        if self.timeout_s is not None:
            faulthandler.dump_traceback_later(2 * self.timeout_s, exit=True)
            if self._thread.ident is None:  # never started
                self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last_beat
            if idle >= self.timeout_s:
                print(f"aurora watchdog: rank {self.rank} completed no step for {idle:.0f} s (last step "
                      f"{self.step}, trainer.hang_timeout_s={self.timeout_s:g}); stacks of every thread "
                      f"follow, then this process exits with code {HANG_EXIT_CODE} for the launcher to "
                      f"restart the job", file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                # The backstop timer would fire inside a slow dump (it is due at twice the timeout):
                # give the dump its own minute, and a dump that hangs still ends the process.
                faulthandler.dump_traceback_later(max(self.timeout_s, 60.0), exit=True)
                try:
                    if (path := flight_recorder.dump(self.rank)) is not None:
                        print(f"aurora watchdog: rank {self.rank}'s last collectives (flight recorder) in {path}",
                              file=sys.stderr, flush=True)
                except Exception as e:  # the exit must happen whatever the dump does
                    print(f"aurora watchdog: no flight recorder dump ({e})", file=sys.stderr, flush=True)
                sys.stderr.flush()
                os._exit(HANG_EXIT_CODE)
