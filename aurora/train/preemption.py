"""Preemption: SIGTERM or SIGUSR1 asks for a checkpoint at the next step boundary and a clean
exit with ``REQUEUE_EXIT_CODE``.

The handler only sets a flag. The loop adds the flag to the one all-reduce it makes every step,
so all ranks see the request at the same step, even when the signal reached only some of them,
and all save together. Slurm sends SIGUSR1 ahead of the time limit (``--signal=USR1@120``);
torchrun forwards SIGTERM (and SIGUSR1 when told: launch/torchrun.sh does) to its workers.
"""

import signal
import threading

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"; launch/slurm.sbatch requeues on it

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> "PreemptionFlag":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
