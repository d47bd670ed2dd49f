"""A rank's error file for torchrun, written so that the agent never reads half of one.

torchrun's ``@record`` writes ``TORCHELASTIC_ERROR_FILE`` with ``open(path, "w")`` and then
``json.dump``. When one rank fails, the agent SIGTERMs the others and parses the error file of
every rank that exited non-zero; a rank that was killed between the ``open`` and the end of the
dump leaves an empty or cut file, and the agent dies of the ``JSONDecodeError`` instead of
restarting the group (seen when a lost node made both survivors fail at once). Here the JSON is
written to a file beside it and renamed into place, so the agent sees a whole file or none
(``none`` is a case it handles: it reports the exit code).
"""

import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from torch.distributed.elastic.multiprocessing.errors import ErrorHandler, record

_R = TypeVar("_R")


class AtomicErrorHandler(ErrorHandler):
    """torch's ``ErrorHandler`` with the same JSON, replaced atomically."""

    def record_exception(self, e: BaseException) -> None:
        path = self._get_error_file_path()
        if not path:
            return super().record_exception(e)
        data = {
            "message": {
                "message": f"{type(e).__name__}: {e}",
                "extraInfo": {"py_callstack": traceback.format_exc(), "timestamp": str(int(time.time()))},
            }
        }
        folder, name = os.path.split(os.path.abspath(path))
        fd, partial = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as fp:
                json.dump(data, fp)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise


def record_atomically(fn: Callable[..., _R]) -> Callable[..., _R | None]:
    """``torch``'s ``@record`` with :class:`AtomicErrorHandler`."""
    return record(fn, error_handler=AtomicErrorHandler())
