"""Where a process sits in the job, from torchrun's or slurm's variables."""

import pytest
import torch

from aurora.distributed import read_launch_env

LAUNCH_VARS = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "SLURM_PROCID",
               "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NNODES"]


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process(clean_env):
    assert read_launch_env() == dict(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, num_nodes=1)


def test_torchrun(clean_env):
    for name, value in dict(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4", GROUP_RANK="1").items():
        clean_env.setenv(name, value)
    assert read_launch_env() == dict(rank=5, world_size=8, local_rank=1, local_world_size=4, node_rank=1, num_nodes=2)


def test_slurm_without_torchrun(clean_env):
    for name, value in dict(SLURM_PROCID="13", SLURM_NTASKS="16", SLURM_LOCALID="5", SLURM_NODEID="1",
                            SLURM_NNODES="2").items():
        clean_env.setenv(name, value)
    assert read_launch_env() == dict(rank=13, world_size=16, local_rank=5, local_world_size=8, node_rank=1, num_nodes=2)


def test_torchrun_wins_over_slurm(clean_env):
    # srun torchrun ...: slurm describes the agent, torchrun the worker.
    for name, value in dict(SLURM_PROCID="1", SLURM_NTASKS="2", RANK="3", WORLD_SIZE="4", LOCAL_RANK="1",
                            LOCAL_WORLD_SIZE="2", GROUP_RANK="1").items():
        clean_env.setenv(name, value)
    assert read_launch_env()["rank"] == 3


def test_each_rank_gets_its_own_gpu_or_the_cpu(clean_env):
    from aurora.config.schema import Backend
    from aurora.distributed.env import pick_device

    assert pick_device(Backend.auto, 3, 8, 8) == torch.device("cuda", 3)
    assert pick_device(Backend.auto, 1, 2, 0) == torch.device("cpu")
    assert pick_device(Backend.gloo, 1, 2, 8) == torch.device("cpu")  # gloo: the job trains on the CPU
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "5")  # one GPU of its own per process (srun --gpus-per-task=1)
    assert pick_device(Backend.auto, 1, 8, 1) == torch.device("cuda", 0)


def test_more_ranks_than_gpus_is_refused_with_what_to_do(clean_env):
    from aurora.config.schema import Backend
    from aurora.distributed.env import pick_device

    clean_env.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(RuntimeError, match=r"2 processes on this node but 1 GPU: each rank needs a GPU of its own\. "
                                           r"Start at most 1 per node \(NPROC=1 .*or set dist\.backend=gloo"):
        pick_device(Backend.auto, 1, 2, 1)
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # shared, not one per process
    with pytest.raises(RuntimeError, match="4 processes on this node but 2 GPUs"):
        pick_device(Backend.nccl, 0, 4, 2)
    with pytest.raises(RuntimeError, match="dist.backend=nccl needs CUDA devices"):
        pick_device(Backend.nccl, 0, 1, 0)


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                found.append(local.rsplit(":", 1)[0])
    return found


def test_the_job_store_listens_on_the_rendezvous_address_alone(clean_env):
    """torch's env:// store listens on every interface (``::``); the job's listens on MASTER_ADDR's."""
    import torch.distributed as dist

    from aurora.config.schema import DistConfig
    from aurora.distributed import init_distributed, shutdown
    from tests.helpers.runs import free_port

    port = free_port()
    for name, value in dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        clean_env.setenv(name, value)
    clean_env.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    init_distributed(DistConfig())
    try:
        assert _listening(port) == ["0100007F"]  # 127.0.0.1
        dist.barrier()
    finally:
        shutdown()
