"""The fault-injection suite: each fault is injected by a hook (aurora/train/faults.py) into a
real job under launch/torchrun.sh (torchrun, gloo, 2 processes), and checked for what matters:
the job recovers, loses nothing, and its final weights equal an uninterrupted run's.

The matrix in docs/reliability.md maps the issue's nine cases to these tests (and to the data
tests for corrupt shards).
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from aurora.config import load_config
from aurora.models.audio_lm import AudioLM
from aurora.tasks.lm import LMTrainConfig
from aurora.runs import load_model_weights
from tests.conftest import REPO, read_metrics
from tests.test_resume import SMALL

STEPS = 8
JOB = [o for o in SMALL if not o.startswith("trainer.checkpoint_every")] + [
    "trainer.checkpoint_every=2", f"trainer.max_steps={STEPS}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_env(max_restarts: int, fault_env: dict | None, nproc: int = 2) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable,
            "NPROC": str(nproc), "MAX_RESTARTS": str(max_restarts), "MASTER_PORT": str(_free_port()),
            "RDZV_ID": f"test{os.getpid()}", **(fault_env or {})}


def _command(run_dir, shards, overrides) -> list[str]:
    return ["bash", "launch/torchrun.sh", "train", "configs/lm/tiny.yaml", f"run.dir={run_dir}",
            f"data.shards={shards}", *JOB, *overrides]


def launch(run_dir, shards, *overrides, max_restarts=0, fault_env=None, nproc=2,
           timeout=240) -> subprocess.CompletedProcess:
    """Run the tiny LM job through launch/torchrun.sh; returns the finished process."""
    return subprocess.run(_command(run_dir, shards, overrides), cwd=REPO, env=_launch_env(max_restarts, fault_env, nproc),
                          capture_output=True, text=True, timeout=timeout)


def _show(result) -> str:
    return f"rc={result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"


def weights(run_dir, step: int | None = None) -> dict:
    model = AudioLM(load_config(LMTrainConfig, run_dir / "config.yaml").model)
    where = run_dir if step is None else run_dir / "checkpoints" / f"step_{step:08d}"
    load_model_weights(model, where)
    return model.state_dict()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, token_shards):
    """The uninterrupted run every recovery is compared with."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = launch(run_dir, token_shards)
    assert result.returncode == 0, _show(result)
    return run_dir


# 1 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("async_checkpoint", [False, True], ids=["sync", "async"])
def test_killed_rank_restarts_and_ends_bit_identical(tmp_path, token_shards, straight, async_checkpoint):
    result = launch(tmp_path, token_shards, f"trainer.async_checkpoint={str(async_checkpoint).lower()}",
                    "trainer.keep_last_n=2", max_restarts=1, fault_env={"AURORA_FAULT_KILL": "5@1"})
    assert result.returncode == 0, _show(result)
    # An async save of step 4 may still be in flight when the rank dies: then step 2 is the latest.
    assert "at step 4" in result.stdout or (async_checkpoint and "at step 2" in result.stdout), _show(result)
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    assert_same_weights(weights(straight), weights(tmp_path))


# 2 -----------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in children] + [d for c in children for d in _descendants(int(c))]


def test_a_lost_node_shrinks_the_job_and_the_loss_goes_on(tmp_path, token_shards):
    """Two torchrun agents of 2 ranks each (NNODES=1:2) on one rendezvous; one "node" dies
    whole. The survivor restarts alone and resumes the 4-rank checkpoint on 2 ranks."""
    four, shrunk = tmp_path / "four", tmp_path / "shrunk"
    assert (result := launch(four, token_shards, nproc=4)).returncode == 0, _show(result)
    env = {**_launch_env(1, {"AURORA_FAULT_STEP_DELAY_S": "0.3"}), "NNODES": "1:2", "RDZV_CONF": "last_call_timeout=1"}
    nodes = []
    for _ in range(2):  # the first hosts the rendezvous store: it is the one that survives
        nodes.append(subprocess.Popen(_command(shrunk, token_shards, []), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
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


# 3 -----------------------------------------------------------------------------------------
def test_sigterm_checkpoints_exits_for_requeue_and_resumes_identically(tmp_path, token_shards, straight):
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
    assert_same_weights(weights(straight), weights(tmp_path))


# 4 -----------------------------------------------------------------------------------------
def test_hung_rank_is_reported_by_the_watchdog_and_the_job_recovers(tmp_path, token_shards, straight):
    logs = tmp_path / "logs"  # torchrun's per-rank logs: LOG_DIR/<RDZV_ID>_<random>/attempt_N/<local rank>/
    result = launch(tmp_path / "run", token_shards, "trainer.hang_timeout_s=4", "dist.timeout_s=60",
                    max_restarts=1, fault_env={"AURORA_FAULT_HANG": "3@1", "LOG_DIR": str(logs)})
    assert result.returncode == 0, _show(result)
    hung_rank_log = "\n".join(p.read_text() for p in logs.glob("*/attempt_0/1/stderr.log"))
    assert "aurora watchdog: rank 1 completed no step for" in hung_rank_log, _show(result)
    assert "in after_step" in hung_rank_log, hung_rank_log  # the hung thread's stack, from faulthandler
    assert "at step 2" in result.stdout  # resumed from the checkpoint before the hang
    assert_same_weights(weights(straight), weights(tmp_path / "run"))


# 5 -----------------------------------------------------------------------------------------
def _checkpoint_bytes(run_dir) -> int:
    return sum(f.stat().st_size for f in (run_dir / "checkpoints" / "step_00000002").rglob("*") if f.is_file())


def test_full_disk_frees_older_checkpoints_and_retries(tmp_path, token_shards, straight):
    quota = int(2.5 * _checkpoint_bytes(straight))
    result = launch(tmp_path, token_shards, fault_env={"AURORA_FAULT_DISK_QUOTA_BYTES": str(quota)})
    assert result.returncode == 0, _show(result)
    assert "disk full while saving step_00000006; deleted 1 older checkpoints" in result.stderr, _show(result)
    assert "errors/checkpoint" not in read_metrics(tmp_path)[-1]  # every retry succeeded
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    assert_same_weights(weights(straight), weights(tmp_path))


def test_full_disk_skips_the_save_and_keeps_the_last_complete_checkpoint(tmp_path, token_shards, straight):
    quota = int(1.5 * _checkpoint_bytes(straight))
    result = launch(tmp_path, token_shards, fault_env={"AURORA_FAULT_DISK_QUOTA_BYTES": str(quota)})
    assert result.returncode != 0 and "exitcode  : 1" in result.stderr, _show(result)  # no final checkpoint
    assert "finished step 8 but its checkpoint failed" in result.stderr, _show(result)
    assert "checkpoint step_00000004 disk full; skipped it on every rank, latest stays at step_00000002" in result.stderr
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # training went on
    assert metrics[-1]["errors/checkpoint"] == 3  # steps 4, 6 and 8
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000002"]
    assert_same_weights(weights(straight, 2), weights(tmp_path))


# 6 -----------------------------------------------------------------------------------------
def test_failures_in_metrics_wandb_and_eval_are_counted_and_the_run_goes_on(tmp_path, token_shards, straight):
    result = launch(tmp_path, token_shards, f"data.eval_shards={token_shards}", "trainer.eval_every=4",
                    "trainer.eval_batches=2", "logging.wandb=true", "logging.wandb_mode=offline",
                    fault_env={"AURORA_FAULT_RAISE": "metrics@3,wandb@2,eval@4", "WANDB_SILENT": "true"})
    assert result.returncode == 0, _show(result)
    metrics = {m["step"]: m for m in read_metrics(tmp_path)}
    assert sorted(metrics) == [1, 2, 4, 5, 6, 7, 8]  # step 3's line was lost, and only it
    assert metrics[4]["errors/metrics"] == 1 and metrics[4]["errors/wandb"] == 1 and metrics[4]["errors/eval"] == 1
    assert "eval/loss" not in metrics[4] and metrics[8]["eval/loss"] > 0
    for kind in ("metrics", "wandb", "eval"):
        assert result.stderr.count(f"{kind} failed; training continues") == 1, kind
    assert "fault injected at eval@4" in result.stderr
    assert_same_weights(weights(straight), weights(tmp_path))


# 7 -----------------------------------------------------------------------------------------
def test_consecutive_nonfinite_steps_stop_with_the_last_good_weights(tmp_path, token_shards):
    result = launch(tmp_path, token_shards, "trainer.max_bad_steps=3", "trainer.checkpoint_every=1",
                    fault_env={"AURORA_FAULT_NAN_LOSS": "3,4,5@1"})
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, _show(result)  # torchrun's report
    assert "3 consecutive non-finite steps (steps 3-5, trainer.max_bad_steps=3)" in result.stderr, _show(result)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    assert [m["skipped_steps"] for m in read_metrics(tmp_path)] == [0, 0, 1, 2, 3]
    assert_same_weights(weights(tmp_path, 2), weights(tmp_path, 5))


# 9 -----------------------------------------------------------------------------------------
def test_crash_before_latest_moves_resumes_from_the_previous_checkpoint(tmp_path, token_shards, straight):
    crashed = launch(tmp_path, token_shards, fault_env={"AURORA_FAULT_CRASH_BEFORE_LATEST": "4"})
    assert crashed.returncode != 0
    assert (tmp_path / "checkpoints" / "step_00000004").is_dir()  # renamed into place ...
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"  # ... never pointed at
    resumed = launch(tmp_path, token_shards)
    assert resumed.returncode == 0, _show(resumed)
    assert "step_00000002 at step 2" in resumed.stdout
    assert_same_weights(weights(straight), weights(tmp_path))
