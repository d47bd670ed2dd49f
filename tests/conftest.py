"""Shared fixtures: small shard sets built by the real data_prep tools, and a torchrun runner."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from aurora.data.manifest import write_manifest

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


def write_token_shards(out: Path, num_clips: int = 32, per_shard: int = 8, n_q: int = 4,
                       codebook_size: int = 256, frames: int = 40, seed: int = 0) -> Path:
    """Random token shards in the format data_prep.tokenize writes (no codec attached)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, num_clips, per_shard):
        name = f"shard-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(out / name)) as sink:
            for i in range(s, min(s + per_shard, num_clips)):
                codes = rng.integers(0, codebook_size, size=(n_q, frames)).astype(np.int16)
                buffer = io.BytesIO()
                np.save(buffer, codes)
                meta = {"text": f"clip number {i} with a {['low', 'high'][i % 2]} tone", "frames": frames}
                sink.write({"__key__": f"clip{i:05d}", "codes.npy": buffer.getvalue(), "json": json.dumps(meta).encode()})
        shards.append({"name": name, "samples": min(per_shard, num_clips - s), "seconds": per_shard * frames / 50})
    write_manifest(out, "tokens", shards, 16000, n_q=n_q, codebook_size=codebook_size, frame_rate=50.0, codec=None)
    return out


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
