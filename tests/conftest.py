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
