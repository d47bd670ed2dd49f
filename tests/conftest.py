"""Shared fixtures: small shard sets built by the real data_prep tools, and a torchrun runner."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.synth_tokens import write_token_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seeded(request):
    """Every test starts from its own fixed random state (torch, numpy, random), whatever ran
    before it in this process: a test's numbers never depend on the order of the suite."""
    import random
    import zlib

    import numpy as np

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    yield


@pytest.fixture
def world_of_one():
    """A one-rank gloo process group in this process, for code that issues collectives."""
    import torch.distributed as dist

    from aurora.distributed import DistEnv

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield DistEnv(0, 1, 0, 1, 0, 1, torch.device("cpu"), "gloo")
    dist.destroy_process_group()


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: a second thread only adds synchronisation, which costs tens of
    seconds when other processes (torchrun workers) keep the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def audio_shards(tmp_path_factory) -> Path:
    """24 synthetic clips (16 kHz) in 3 shards of 8."""
    from data_prep import make_shards, synth

    root = tmp_path_factory.mktemp("audio")
    synth.main(["--out", str(root / "corpus"), "--num-clips", "24", "--min-seconds", "0.6", "--max-seconds", "1.2"])
    make_shards.main(["--manifest", str(root / "corpus" / "metadata.jsonl"), "--out", str(root / "shards"),
                      "--samples-per-shard", "8"])
    return root / "shards"


@pytest.fixture(scope="session")
def token_shards(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens") / "shards")


def run_cmd(args: list[str], nproc: int = 0, env: dict | None = None, check: bool = True,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ...args`` (under torchrun with ``nproc`` processes when nproc > 0)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    prefix = [sys.executable]
    if nproc:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    result = subprocess.run(prefix + args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed ({result.returncode}): {' '.join(args)}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(args: list[str], nodes: int = 2, nproc_per_node: int = 2, env: dict | None = None,
              timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Run ``python ...args`` as a multi-node job without a cluster: one torchrun agent per
    "node" on this machine, joined by c10d rendezvous on localhost (the first agent hosts its
    store). Each agent's workers get that node's GROUP_RANK and LOCAL_WORLD_SIZE, as on a cluster."""
    import time

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
                "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", f"nodes{os.getpid()}"]
    agents = []
    for _ in range(nodes):
        agents.append(subprocess.Popen(launcher + args, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True))
        time.sleep(1.0)  # the first agent must be up to host the rendezvous store
    results = []
    for agent in agents:
        out, err = agent.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(agent.args, agent.returncode, out, err))
    for node, result in enumerate(results):
        if result.returncode != 0:
            raise AssertionError(f"node {node} failed ({result.returncode}): {' '.join(args)}\n"
                                 f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}")
    return results
