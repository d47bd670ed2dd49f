"""The hang watchdog's clock: it starts at the first completed step, and a rank silent for the
timeout after a step exits with HANG_EXIT_CODE. Each case runs in its own interpreter, since
the watchdog ends its process."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

from aurora.train.watchdog import HANG_EXIT_CODE
from tests.helpers.runs import REPO

SCRIPT = """
import time
from aurora.train.watchdog import HangWatchdog
{setup}
with HangWatchdog(0.5, rank=3) as watchdog:
    time.sleep(1.5)  # the first step: start-up, not timed
    watchdog.beat(1)
    time.sleep({after_first_step})
print("finished")
"""
ONE_COLLECTIVE = """
import torch
import torch.distributed as dist
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
dist.all_reduce(torch.ones(3))
"""
"""A process group whose one collective the flight recorder holds."""


def run(after_first_step: float, env: dict | None = None, setup: str = "") -> subprocess.CompletedProcess:
    script = SCRIPT.format(after_first_step=after_first_step, setup=setup)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_a_slow_first_step_is_not_a_hang():
    result = run(after_first_step=0.1)
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr


def test_silence_after_a_step_exits_with_the_stacks_and_the_flight_recorder(tmp_path):
    """With the recorder on, as the launch scripts set it, the rank's last collectives are dumped
    where ``TORCH_FR_DUMP_TEMP_FILE`` says (+ rank), in torch's own pickle format."""
    prefix = tmp_path / "comm_traces" / "rank_"
    result = run(after_first_step=3.0, env={"TORCH_FR_BUFFER_SIZE": "100", "TORCH_FR_DUMP_TEMP_FILE": str(prefix)},
                 setup=ONE_COLLECTIVE)
    assert result.returncode == HANG_EXIT_CODE, result.stderr
    assert "aurora watchdog: rank 3 completed no step for" in result.stderr and "last step 1" in result.stderr
    assert "finished" not in result.stdout
    entries = pickle.loads(Path(f"{prefix}3").read_bytes())["entries"]
    assert [e["profiling_name"] for e in entries] == ["gloo:all_reduce"] and entries[0]["input_sizes"] == [[3]]
