"""One rank of a ``tests.helpers.pool.WorkerPool``: joins the pool's process group, then runs
the tasks the parent sends until it sends ``None``."""

import importlib
import os
import pickle
import sys
import tempfile
import traceback
from datetime import timedelta
from multiprocessing.connection import Client

import torch
import torch.distributed as dist

from tests.helpers.pool import STOP, RankResult

_LINEAR = torch.nn.functional.linear
"""A task must leave torch as it found it: DeepSpeed's ZeRO-3, unless told otherwise
(``memory_efficient_linear``), replaces ``torch.nn.functional.linear`` for the whole process,
and a later task compiling a model then trained different numbers."""


class _CapturedOutput:
    """File descriptors 1 and 2 go to a file while a task runs (Python, C++ and children alike)."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.seek(0)
        self.text = self.file.read().decode(errors="replace")
        self.file.close()


def _run(rank: int, task: bytes) -> RankResult:
    module, qualname, args, kwargs, env = pickle.loads(task)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.update(env)
    result = RankResult(rank)
    with _CapturedOutput() as output:
        try:
            fn = importlib.import_module(module)
            for name in qualname.split("."):
                fn = getattr(fn, name)
            result.value = fn(*args, **kwargs)
            if torch.nn.functional.linear is not _LINEAR:
                torch.nn.functional.linear = _LINEAR
                raise RuntimeError(f"{module}.{qualname} left torch.nn.functional.linear replaced (DeepSpeed "
                                   "ZeRO-3 does unless memory_efficient_linear is false); it is put back")
        except BaseException as e:  # SystemExit too: a task that exits is one that failed
            result.error = "".join(traceback.format_exception(e))
            try:
                pickle.dumps(e)
                result.exception = e
            except Exception:
                pass
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            torch.set_num_threads(1)
    result.output = output.text
    try:
        pickle.dumps(result.value)
    except Exception as e:
        result.value, result.error = None, f"the return value does not pickle: {e!r}"
    return result


def main() -> None:
    rank, world = int(os.environ["AURORA_POOL_RANK"]), int(os.environ["AURORA_POOL_WORLD"])
    host, port = os.environ["AURORA_POOL_ADDRESS"].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ["AURORA_POOL_AUTHKEY"]))
    conn.send(rank)
    torch.set_num_threads(1)
    store = dist.FileStore(os.environ["AURORA_POOL_STORE"], world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=600))
    dist.barrier()
    conn.send("ready")
    while (task := conn.recv_bytes()) != STOP:
        # Plain pickle: Connection.send's ForkingPickler would hand tensors over as shared memory,
        # through a resource sharer that only processes started by multiprocessing can reach.
        conn.send_bytes(pickle.dumps(_run(rank, task)))
    # No teardown: destroying the group waits on peers, and atexit handlers on what tasks left;
    # the parent is done with every rank when it says stop.
    os._exit(0)


if __name__ == "__main__":
    main()
