"""torch's flight recorder: the last collectives of every process group, kept in a ring buffer
in C++, for finding which rank a hung job waits on.

The launch scripts turn it on (``TORCH_FR_BUFFER_SIZE``, entries kept) and have NCCL dump it
when a collective times out (``TORCH_NCCL_DUMP_ON_TIMEOUT=1``). Dumps go to
``TORCH_FR_DUMP_TEMP_FILE`` + rank; aurora points that under the run,
``RUN/comm_traces/rank_<r>``, unless the environment already names a place. aurora's hang
watchdog dumps it too (``dump``), on gloo as on NCCL, before it ends the process. A dump is a
pickle of torch's format (``entries``: each collective's name, sizes, state and Python stack).
NCCL's own dumps are read with torch's analyser, ``python -m
torch.distributed.flight_recorder.fr_trace RUN/comm_traces -p rank_``; in torch 2.11 it fails on
a gloo process's dump (KeyError on the process group's name), which ``pickle.load`` reads.
"""

import os
from pathlib import Path

import torch

BUFFER_SIZE = "TORCH_FR_BUFFER_SIZE"
DUMP_FILE = "TORCH_FR_DUMP_TEMP_FILE"
DUMP_DIR = "comm_traces"


def dump_under(run_dir: Path) -> None:
    """Send this process's dumps to ``run_dir/comm_traces/rank_<r>``, unless the environment
    names another place (torch reads the variable when it first writes a dump)."""
    if BUFFER_SIZE in os.environ and DUMP_FILE not in os.environ:
        os.environ[DUMP_FILE] = str(Path(run_dir) / DUMP_DIR / "rank_")


def dump(rank: int) -> Path | None:
    """Write the recorded collectives of this process (a pickle, as torch's own dumps are) to
    ``TORCH_FR_DUMP_TEMP_FILE`` + rank; the path, or None when the recorder is off."""
    if int(os.environ.get(BUFFER_SIZE, "0") or 0) <= 0 or DUMP_FILE not in os.environ:
        return None
    path = Path(os.environ[DUMP_FILE] + str(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(torch._C._distributed_c10d._dump_fr_trace())
    return path
