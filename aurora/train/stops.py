"""Ways a run ends early on purpose, each with the exit code the launchers act on.

=====  ==========================================================================================
code   meaning
=====  ==========================================================================================
0      finished ``trainer.max_steps``
1      an error (a traceback says where), or the last step's checkpoint could not be written
2      bad input (config, shard paths, manifests): the message says what to fix
3      diverged: ``trainer.max_bad_steps`` consecutive non-finite steps (a checkpoint of the last
       good weights was written)
75     preempted (SIGTERM/SIGUSR1): a checkpoint was written; requeue the job to continue
124    hang watchdog: no step for ``trainer.hang_timeout_s`` (stacks in the log); restart
=====  ==========================================================================================
"""

from aurora.train.preemption import REQUEUE_EXIT_CODE
from aurora.train.watchdog import HANG_EXIT_CODE

DIVERGED_EXIT_CODE = 3

__all__ = ["RunStopped", "DIVERGED_EXIT_CODE", "REQUEUE_EXIT_CODE", "HANG_EXIT_CODE"]


class RunStopped(Exception):
    """Raised on every rank, together, after the stop's checkpoint is written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
