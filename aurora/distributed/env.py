"""Where this process sits in the job, read from torchrun's or slurm's environment.

This is the only module that reads rank/world/node variables. Single-process runs (no
launcher) get a world of one and still a real process group, so the engines run one path.
"""

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from aurora.config.schema import Backend, DistConfig


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def read_launch_env() -> dict[str, int]:
    """rank, world_size, local_rank, local_world_size, node_rank, num_nodes of this process.

    torchrun's variables win; under a bare ``srun`` (no torchrun) slurm's are used.
    """
    if _int("RANK") is not None and _int("WORLD_SIZE") is not None:
        world = _int("WORLD_SIZE")
        local_world = _int("LOCAL_WORLD_SIZE") or world
        return dict(
            rank=_int("RANK"),
            world_size=world,
            local_rank=_int("LOCAL_RANK") or 0,
            local_world_size=local_world,
            node_rank=_int("GROUP_RANK") or 0,
            num_nodes=max(1, world // local_world),
        )
    if _int("SLURM_PROCID") is not None and _int("SLURM_NTASKS") is not None:
        world = _int("SLURM_NTASKS")
        nodes = _int("SLURM_NNODES") or 1
        return dict(
            rank=_int("SLURM_PROCID"),
            world_size=world,
            local_rank=_int("SLURM_LOCALID") or 0,
            local_world_size=world // nodes,
            node_rank=_int("SLURM_NODEID") or 0,
            num_nodes=nodes,
        )
    return dict(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, num_nodes=1)


def pick_device(backend: Backend, local_rank: int, local_world_size: int, gpus: int) -> torch.device:
    """This process's device: GPU ``local_rank`` of the ``gpus`` it sees, or the CPU without GPUs
    or with ``dist.backend=gloo`` (gloo reduces CPU tensors: the job trains on the CPU).

    More processes on a node than GPUs would put two ranks on one GPU, which NCCL refuses (and
    which halves each rank's memory): that is an error, unless each process sees one GPU of its
    own (``CUDA_VISIBLE_DEVICES`` set per process, as ``srun --gpus-per-task=1`` does)."""
    if backend == Backend.nccl and gpus == 0:
        raise RuntimeError("dist.backend=nccl needs CUDA devices; use dist.backend=gloo (or auto) on CPU")
    if backend == Backend.gloo or gpus == 0:
        return torch.device("cpu")
    if local_world_size > gpus and not (gpus == 1 and os.environ.get("CUDA_VISIBLE_DEVICES")):
        raise RuntimeError(
            f"{local_world_size} processes on this node but {gpus} GPU{'s' if gpus > 1 else ''}: each rank needs a "
            f"GPU of its own. Start at most {gpus} per node (NPROC={gpus} launch/torchrun.sh, "
            f"--nproc-per-node {gpus}), give each process its own CUDA_VISIBLE_DEVICES, or set dist.backend=gloo "
            f"to train on the CPU")
    return torch.device("cuda", local_rank % gpus)


_created: list[dist.ProcessGroup] = []
"""The default process group, when ``init_distributed`` created it (``shutdown`` destroys only that)."""


def init_distributed(cfg: DistConfig) -> DistEnv:
    """Pick the device and backend, and join the default process group: the one this process
    already has (a caller that set one up, such as a test's worker pool), or a new one."""
    launch = read_launch_env()
    device = pick_device(cfg.backend, launch["local_rank"], launch["local_world_size"],
                         torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = cfg.backend.value if cfg.backend != Backend.auto else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        timeout = timedelta(seconds=cfg.timeout_s)
        if launch["world_size"] == 1 and "MASTER_ADDR" not in os.environ:
            store = dist.HashStore()
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            if "MASTER_ADDR" not in os.environ:
                raise RuntimeError(
                    "MASTER_ADDR/MASTER_PORT are not set: launch with torchrun "
                    "(launch/torchrun.sh) or export them in the slurm script"
                )
            os.environ.setdefault("RANK", str(launch["rank"]))
            os.environ.setdefault("WORLD_SIZE", str(launch["world_size"]))
            dist.init_process_group(
                backend, store=_job_store(launch, timeout), rank=launch["rank"], world_size=launch["world_size"],
                timeout=timeout, device_id=device if device.type == "cuda" else None
            )
        _created[:] = [dist.group.WORLD]
    return DistEnv(device=device, backend=backend, **launch)


def _job_store(launch: dict, timeout: timedelta) -> dist.TCPStore | None:
    """The job's TCPStore at MASTER_ADDR:MASTER_PORT, hosted by rank 0 and listening on that
    address alone (torch's own ``env://`` store listens on every interface; a socket bound here is
    handed to it). It listens on every interface when MASTER_ADDR resolves to a loopback address
    on a job of several nodes (a hosts-file alias such as Debian's 127.0.1.1, which the other nodes
    resolve otherwise). None under torchrun's shared agent store (``TORCHELASTIC_USE_AGENT_STORE``):
    the agent hosts the store there, and ``env://`` joins it."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    host, port, world = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), launch["world_size"]
    if launch["rank"] != 0:
        return dist.TCPStore(host, port, world, is_master=False, timeout=timeout, multi_tenant=True)
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    if ipaddress.ip_address(address[0]).is_loopback and launch["num_nodes"] > 1:
        return dist.TCPStore(host, port, world, is_master=True, timeout=timeout, multi_tenant=True)
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen()
    return dist.TCPStore(host, port, world, is_master=True, timeout=timeout, multi_tenant=True,
                         master_listen_fd=listener.detach())  # the store owns the socket from here


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over all ranks (one collective)."""
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_named(values: dict[str, torch.Tensor | float], device: torch.device) -> dict[str, float]:
    """Sum named numbers (0-d tensors or floats, float32) over all ranks in one collective. Every
    rank must pass the same names."""
    names = sorted(values)
    local = torch.stack([torch.as_tensor(values[n], dtype=torch.float32, device=device) for n in names])
    return dict(zip(names, all_reduce_sum(local).tolist()))


def barrier() -> None:
    dist.barrier()


_background: dict[int, tuple[dist.ProcessGroup, dist.ProcessGroup]] = {}
"""id of the default group -> (it, kept alive so the id stays its own; its background group)."""


def background_group() -> dist.ProcessGroup:
    """A gloo group over every rank for work in background threads (async checkpoint writes),
    so its collectives never interleave with training's. Made once per default process group
    (a collective the first time: every rank calls it at the same point)."""
    world = dist.group.WORLD
    if id(world) not in _background:
        _background[id(world)] = (world, dist.new_group(backend="gloo"))
    return _background[id(world)][1]


def shutdown() -> None:
    """Destroy the default process group if ``init_distributed`` created it; one it found (a
    caller's) is left to the caller."""
    if dist.is_initialized() and _created and _created[0] is dist.group.WORLD:
        _background.pop(id(dist.group.WORLD), None)
        _created.clear()
        dist.destroy_process_group()
