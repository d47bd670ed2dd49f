"""launch/torchrun.sh's rendezvous settings, run with a stand-in interpreter that prints the
torchrun command line it was given (nothing is launched)."""

import os
import subprocess

import pytest

from tests.helpers.runs import REPO

_FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "$@"
echo "env TORCH_FR_BUFFER_SIZE=$TORCH_FR_BUFFER_SIZE TORCH_NCCL_DUMP_ON_TIMEOUT=$TORCH_NCCL_DUMP_ON_TIMEOUT"
"""


def _launch(tmp_path, **env) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RDZV_ID", "SLURM_JOB_ID")}
    return subprocess.run(["bash", "launch/torchrun.sh", "train", "configs/lm/tiny.yaml"], cwd=REPO,
                          env={**base, "PYTHON": str(fake), "NPROC": "2", **env}, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("nnodes", ["1", "1:1"])
def test_one_node_has_a_rendezvous_of_its_own(tmp_path, nnodes):
    """--standalone: a free port and a generated id, whatever MASTER_PORT or RDZV_ID say, so a
    second job on the host never joins the first one's rendezvous."""
    result = _launch(tmp_path, NNODES=nnodes, MASTER_PORT="29500", RDZV_ID="aurora")
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert "--standalone" in args
    assert not {"--rdzv-endpoint", "--rdzv-id", "--rdzv-backend"} & set(args)
    assert args[args.index("--nnodes") + 1] == nnodes


def test_several_nodes_meet_at_master_addr_under_the_slurm_job_id(tmp_path):
    result = _launch(tmp_path, NNODES="2:4", MASTER_ADDR="node01", SLURM_JOB_ID="4242")
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()
    assert "--standalone" not in args
    assert args[args.index("--rdzv-endpoint") + 1] == "node01:29500"
    assert args[args.index("--rdzv-id") + 1] == "4242"


def test_the_flight_recorder_is_on_and_nsys_wraps_each_worker(tmp_path):
    """By default every worker keeps its last 20000 collectives and NCCL dumps them on a timeout;
    NSYS=1 runs each worker as ``launch/nsys.sh PYTHON -m aurora ...`` (torchrun --no-python)."""
    plain = _launch(tmp_path).stdout.splitlines()
    assert plain[-1] == "env TORCH_FR_BUFFER_SIZE=20000 TORCH_NCCL_DUMP_ON_TIMEOUT=1"
    assert plain[plain.index("-m", plain.index("--signals-to-handle")):-1] == ["-m", "aurora", "train",
                                                                              "configs/lm/tiny.yaml"]
    profiled = _launch(tmp_path, NSYS="1", TORCH_FR_BUFFER_SIZE="0").stdout.splitlines()
    start = profiled.index("--no-python")
    assert profiled[start:-1] == ["--no-python", str(REPO / "launch" / "nsys.sh"), str(tmp_path / "python"), "-m",
                                  "aurora", "train", "configs/lm/tiny.yaml"]
    assert profiled[-1].startswith("env TORCH_FR_BUFFER_SIZE=0 ")


_FAKE_NSYS = """#!/usr/bin/env bash
printf '%s\\n' "$@"
"""


def _nsys(tmp_path, **env) -> subprocess.CompletedProcess:
    """launch/nsys.sh around ``echo trained run.dir=RUN`` as torchrun's worker 3 (node 1) of
    slurm job 77's third attempt, with a stand-in nsys that prints its arguments."""
    (tmp_path / "nsys").write_text(_FAKE_NSYS)
    (tmp_path / "nsys").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NSYS", "TORCHELASTIC"))}
    return subprocess.run(["bash", "launch/nsys.sh", "echo", "trained", f"run.dir={tmp_path / 'run'}"], cwd=REPO,
                          env={**base, "PATH": f"{tmp_path}:{os.environ['PATH']}", "RANK": "3", "GROUP_RANK": "1",
                               "SLURM_JOB_ID": "77", "TORCHELASTIC_RESTART_COUNT": "2", **env},
                          capture_output=True, text=True, timeout=30)


def test_nsys_captures_the_window_into_one_report_per_rank(tmp_path):
    result = _nsys(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "profile", "--capture-range=cudaProfilerApi", "--capture-range-end=stop", "-t", "cuda,nvtx,osrt,cudnn,cublas",
        "-s", "none", "-f", "true", "-o", f"{tmp_path}/run/nsys/77_node1_rank3_attempt2", "echo", "trained",
        f"run.dir={tmp_path}/run"]
    assert (tmp_path / "run" / "nsys").is_dir()


def test_nsys_leaves_other_ranks_bare_and_refuses_a_missing_nsys(tmp_path):
    assert _nsys(tmp_path, NSYS_RANKS="0,8").stdout == f"trained run.dir={tmp_path}/run\n"
    missing = _nsys(tmp_path, NSYS_BIN=str(tmp_path / "absent"))
    assert missing.returncode == 2 and missing.stdout == ""
    [line] = missing.stderr.splitlines()
    assert line.startswith(f"launch/nsys.sh: {tmp_path}/absent not found: install Nsight Systems")


@pytest.mark.parametrize("env, expected", [
    ({"NNODES": "2"}, "NNODES=2 needs MASTER_ADDR"),
    ({"NNODES": "2:4", "RDZV_ID": "lm-7"}, "NNODES=2:4 needs MASTER_ADDR"),
    ({"NNODES": "2", "MASTER_ADDR": "node01"}, "NNODES=2 needs RDZV_ID"),
])
def test_several_nodes_without_an_address_or_a_job_id_are_refused(tmp_path, env, expected):
    result = _launch(tmp_path, **env)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"launch/torchrun.sh: {expected}")


_FAKE_SLURM = {
    "scontrol": """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && printf 'node01\\nnode02\\n'
""",
    "srun": """#!/usr/bin/env bash
echo "$MASTER_ADDR $MASTER_PORT $RDZV_ID $NNODES" >"$SRUN_RECORD"
""",
}


def _sbatch(tmp_path, job_id: str, **env) -> str:
    """launch/slurm.sbatch inside a stand-in job of 2 nodes: what its srun was given."""
    for name, text in _FAKE_SLURM.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    result = subprocess.run(["bash", "launch/slurm.sbatch", "train", "configs/lm/tiny.yaml"], cwd=REPO,
                            env={**base, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": job_id,
                                 "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NNODES": "2",
                                 "SRUN_RECORD": str(tmp_path / "srun.txt"), **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return (tmp_path / "srun.txt").read_text().split()


def test_slurm_jobs_meet_on_a_port_of_their_own(tmp_path):
    """Two jobs whose first node is one host (shared allocations) rendezvous on different ports,
    each under its job id; a MASTER_PORT given is kept."""
    first, second = _sbatch(tmp_path, "4242"), _sbatch(tmp_path, "4243")
    assert first == ["node01", "24242", "4242", "2:2"] and second == ["node01", "24243", "4243", "2:2"]
    assert _sbatch(tmp_path, "4242", MASTER_PORT="31000")[1] == "31000"
