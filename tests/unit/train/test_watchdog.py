"""The hang watchdog's clock: it starts at the first completed step, and a rank silent for the
timeout after a step exits with HANG_EXIT_CODE. Each case runs in its own interpreter, since
the watchdog ends its process."""

import subprocess
import sys

from aurora.train.watchdog import HANG_EXIT_CODE
from tests.helpers.runs import REPO

SCRIPT = """
import time
from aurora.train.watchdog import HangWatchdog
with HangWatchdog(0.5, rank=3) as watchdog:
    time.sleep(1.5)  # the first step: start-up, not timed
    watchdog.beat(1)
    time.sleep({after_first_step})
print("finished")
"""


def run(after_first_step: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(after_first_step=after_first_step)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_a_slow_first_step_is_not_a_hang():
    result = run(after_first_step=0.1)
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr


def test_silence_after_a_step_exits_with_the_stacks():
    result = run(after_first_step=3.0)
    assert result.returncode == HANG_EXIT_CODE, result.stderr
    assert "aurora watchdog: rank 3 completed no step for" in result.stderr and "last step 1" in result.stderr
    assert "finished" not in result.stdout
