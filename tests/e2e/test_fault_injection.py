"""The fault-injection suite, where the launcher is part of the recovery: each fault is injected
by a hook (aurora/train/faults.py) into a real job under launch/torchrun.sh (torchrun, gloo, 2
processes): a rank killed, a whole node lost, a hang, SIGTERM, a crash before ``latest`` moves.
Each is checked for what matters: the job recovers, loses nothing, and its final weights equal
an uninterrupted run's (the shared ``lm_straight`` run). Faults that need no restart (full
disks, failing side work, non-finite losses) are tests/dist/test_faults.py's.

The matrix in docs/reliability.md maps the nine cases to these tests (and to the data tests for
corrupt shards).
"""

import os
import pickle
import signal
import subprocess
import sys
import time

from aurora.train.faults import SWITCH as FAULTS
from tests.helpers.runs import (REPO, STRAIGHT_STEPS as STEPS, assert_same_weights, cli, free_port, keys_by_step,
                                lm_train_args, read_metrics, weights)


def _launch_env(max_restarts: int, fault_env: dict | None, nproc: int = 2) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable,
            "NPROC": str(nproc), "MAX_RESTARTS": str(max_restarts), "MASTER_PORT": str(free_port()),
            "RDZV_ID": f"test{os.getpid()}", FAULTS: "1", **(fault_env or {})}


def _command(run_dir, shards, overrides) -> list[str]:
    """The ``lm_straight`` run's job (same config, same steps), through launch/torchrun.sh."""
    return ["bash", "launch/torchrun.sh", *lm_train_args(run_dir, shards, STEPS, "trainer.checkpoint_every=2",
                                                         *overrides)]


def launch(run_dir, shards, *overrides, max_restarts=0, fault_env=None, nproc=2,
           timeout=240) -> subprocess.CompletedProcess:
    """Run the tiny LM job through launch/torchrun.sh; returns the finished process."""
    return subprocess.run(_command(run_dir, shards, overrides), cwd=REPO, env=_launch_env(max_restarts, fault_env, nproc),
                          capture_output=True, text=True, timeout=timeout)


def _show(result) -> str:
    return f"rc={result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"


# 1 -----------------------------------------------------------------------------------------
def test_killed_rank_restarts_and_ends_bit_identical(tmp_path, token_shards, lm_straight):
    """Under async checkpoints, whose save may be in flight when the rank dies. (A restart from a
    sync checkpoint is the hung-rank test's, whose rank exits through the watchdog.)"""
    result = launch(tmp_path, token_shards, "trainer.async_checkpoint=true", "trainer.keep_last_n=2", max_restarts=1,
                    fault_env={"AURORA_FAULT_KILL": "5@1"})
    assert result.returncode == 0, _show(result)
    # An async save of step 4 may still be in flight when the rank dies: then step 2 is the latest.
    assert "at step 4" in result.stdout or "at step 2" in result.stdout, _show(result)
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    assert_same_weights(weights(lm_straight), weights(tmp_path))


# 2 -----------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


def test_a_lost_node_shrinks_the_job_and_the_loss_goes_on(tmp_path, token_shards, pool2x2):
    """Two torchrun agents of 2 ranks each (NNODES=1:2) on one rendezvous; one "node" dies
    whole. The survivor restarts alone and resumes the 4-rank checkpoint on 2 ranks. The
    uninterrupted 4-rank run it is compared with runs in the session's 4-rank pool."""
    four, shrunk = tmp_path / "four", tmp_path / "shrunk"
    args = lm_train_args(four, token_shards, STEPS, "trainer.checkpoint_every=2")
    assert [r.value for r in pool2x2.run(cli, *args)] == [0] * 4
    env = {**_launch_env(1, {"AURORA_FAULT_STEP_DELAY_S": "0.3"}), "NNODES": "1:2", "MASTER_ADDR": "127.0.0.1",
           "RDZV_CONF": "last_call_timeout=1"}
    nodes = []
    for _ in range(2):  # the first hosts the rendezvous store: it is the one that survives
        nodes.append(subprocess.Popen(_command(shrunk, token_shards, ["trainer.record_sample_keys=true"]), cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(1.0)
    metrics = shrunk / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):  # step 4 is saved
        assert time.monotonic() < deadline and nodes[1].poll() is None
        time.sleep(0.05)
    for pid in [nodes[1].pid, *_descendants(nodes[1].pid)]:  # the whole node: launcher, agent, workers
        os.kill(pid, signal.SIGKILL)
    out, _ = nodes[0].communicate(timeout=240)
    assert nodes[0].returncode == 0, out[-8000:]
    assert "elastic resume: 4 ranks saved step_" in out and ", 2 continue it" in out, out[-8000:]
    uninterrupted, continued = read_metrics(four), read_metrics(shrunk)
    assert [m["step"] for m in continued] == list(range(1, STEPS + 1))
    resumed_at = int(out.split("resumed from ")[1].split(" at step ")[1].split()[0])
    for step in range(resumed_at + 1, STEPS + 1):  # other samples, smaller global batches, same trajectory
        assert abs(continued[step - 1]["loss"] - uninterrupted[step - 1]["loss"]) < 0.1, step
        assert continued[step - 1]["loss"] < uninterrupted[0]["loss"] - 0.1, step  # not a fresh start
    # The keys trained on, step by step (the lost ranks' files cut back to the resumed step): every
    # epoch of the 32 clips once, whole, on 4 ranks and then on 2, none twice within one.
    by_step = keys_by_step(shrunk)
    assert sorted(by_step) == list(range(1, STEPS + 1))
    assert [len(by_step[s]) for s in sorted(by_step)] == [16 if s <= resumed_at else 8 for s in sorted(by_step)]
    keys = [key for s in sorted(by_step) for key in by_step[s]]
    epochs = [keys[i:i + 32] for i in range(0, len(keys), 32)]
    assert all(len(set(epoch)) == len(epoch) for epoch in epochs) and len(set(epochs[0])) == 32


# 3 -----------------------------------------------------------------------------------------
def test_sigterm_checkpoints_exits_for_requeue_and_resumes_identically(tmp_path, token_shards, lm_straight):
    env = _launch_env(0, {"AURORA_FAULT_STEP_DELAY_S": "0.4"})
    job = subprocess.Popen(_command(tmp_path, token_shards, ["trainer.checkpoint_every=100"]), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)  # to the launcher, as slurm or a cluster manager would
    out, err = job.communicate(timeout=120)
    assert job.returncode == 75, f"rc={job.returncode}\n{out[-2000:]}\n{err[-6000:]}"
    stopped = read_metrics(tmp_path)[-1]["step"]
    assert 2 <= stopped < STEPS
    assert f"preempted at step {stopped} (signal SIGTERM); checkpoint step {stopped} written" in err
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"

    resumed = launch(tmp_path, token_shards, "trainer.checkpoint_every=100")
    assert resumed.returncode == 0, _show(resumed)
    assert f"at step {stopped}" in resumed.stdout
    assert_same_weights(weights(lm_straight), weights(tmp_path))


# 4 -----------------------------------------------------------------------------------------
def test_hung_rank_is_reported_by_the_watchdog_and_the_job_recovers(tmp_path, token_shards, lm_straight):
    logs = tmp_path / "logs"  # torchrun's per-rank logs: LOG_DIR/<RDZV_ID>_<random>/attempt_N/<local rank>/
    result = launch(tmp_path / "run", token_shards, "trainer.hang_timeout_s=4", "dist.timeout_s=60",
                    max_restarts=1, fault_env={"AURORA_FAULT_HANG": "3@1", "LOG_DIR": str(logs)})
    assert result.returncode == 0, _show(result)
    hung_rank_log = "\n".join(p.read_text() for p in logs.glob("*/attempt_0/1/stderr.log"))
    assert "aurora watchdog: rank 1 completed no step for" in hung_rank_log, _show(result)
    assert "in after_step" in hung_rank_log, hung_rank_log  # the hung thread's stack, from faulthandler
    # Before exiting, each watchdog dumped its rank's last collectives (torch's flight recorder, which
    # launch/torchrun.sh turns on) under the run; they show who waits on whom.
    dumps = {rank: pickle.loads((tmp_path / "run" / "comm_traces" / f"rank_{rank}").read_bytes())["entries"]
             for rank in (0, 1)}
    assert all(entries and entries[-1]["profiling_name"].startswith("gloo:") for entries in dumps.values()), dumps
    assert "rank 1's last collectives (flight recorder)" in hung_rank_log
    waiting, hung = dumps[0][-1], dumps[1][-1]  # rank 0 waits in the next step's first collective
    assert waiting["process_group"] == hung["process_group"]
    assert (waiting["collective_seq_id"], waiting["profiling_name"]) == (hung["collective_seq_id"] + 1, "gloo:all_reduce")
    assert "at step 2" in result.stdout  # resumed from the checkpoint before the hang
    assert_same_weights(weights(lm_straight), weights(tmp_path / "run"))


# 9 -----------------------------------------------------------------------------------------
def test_crash_before_latest_moves_resumes_from_the_previous_checkpoint(tmp_path, token_shards, lm_straight):
    crashed = launch(tmp_path, token_shards, fault_env={"AURORA_FAULT_CRASH_BEFORE_LATEST": "4"})
    assert crashed.returncode != 0
    assert (tmp_path / "checkpoints" / "step_00000004").is_dir()  # renamed into place ...
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"  # ... never pointed at
    resumed = launch(tmp_path, token_shards)
    assert resumed.returncode == 0, _show(resumed)
    assert "step_00000002 at step 2" in resumed.stdout
    assert_same_weights(weights(lm_straight), weights(tmp_path))
