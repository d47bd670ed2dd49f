"""Shared fixtures: seeding, the shard sets, the worker pools and the runs several tests read.

The tree mirrors the package and says how a test runs, by marker:

- ``tests/unit/``: one process, in this one (``-m unit``; ``make test-fast``);
- ``tests/dist/``: several ranks, in the session's persistent gloo worker pools (``-m dist``);
- ``tests/e2e/``: real launches (torchrun, launch/torchrun.sh, the demo script), where the
  launcher is what is tested (``-m e2e``).

They run in that order (unit tests first: the quickest feedback), and runs that several tests
read are made once (``lm_straight``, ``codec_run``). The shared codec run, one process, is
started at the beginning of the session on ``pool1`` and trains on the core the unit tests
leave free.
"""

from pathlib import Path

import pytest
import torch

from tests.helpers.pool import WorkerPool
from tests.helpers.runs import STRAIGHT_STEPS, cli, codec_run_args, lm_train_args
from tests.helpers.shards import make_audio_shards, make_token_shards
from tests.helpers.tokens import BATCH as TOKENIZE_BATCHING, make_codec

TESTS = Path(__file__).resolve().parent
_NEEDS_CODEC_RUN = pytest.StashKey[bool]()
MARKERS = {"unit": "one process, in the test process", "dist": "several ranks, in the session's worker pools",
           "e2e": "real launches: torchrun, launch/torchrun.sh, the demo"}


def pytest_configure(config):
    for name, what in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_ignore_collect(collection_path, config):
    """Collect tests/dist, which pytest's default ``norecursedirs`` (made for build output) skips."""
    if collection_path == TESTS / "dist":
        return False
    return None


def _kind(item) -> str:
    return Path(item.fspath).relative_to(TESTS).parts[0]


def pytest_collection_modifyitems(config, items):
    order = list(MARKERS)
    for item in items:
        if _kind(item) in MARKERS:
            item.add_marker(_kind(item))
    items.sort(key=lambda item: order.index(_kind(item)) if _kind(item) in order else len(order))
    config.stash[_NEEDS_CODEC_RUN] = any("codec_run" in item.fixturenames for item in items)


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


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: a second thread only adds synchronisation, which costs tens of
    seconds when other processes (pool workers, launched jobs) keep the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def world_of_one():
    """A one-rank gloo process group in this process, for code that issues collectives."""
    import torch.distributed as dist

    from aurora.distributed import DistEnv

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield DistEnv(0, 1, 0, 1, 0, 1, torch.device("cpu"), "gloo")
    dist.destroy_process_group()


# -- data ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def audio_shards(tmp_path_factory) -> Path:
    """24 synthetic clips (16 kHz) in 3 shards of 8."""
    return make_audio_shards(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="session")
def token_shards(tmp_path_factory) -> Path:
    """32 random token clips in 4 shards of 8."""
    return make_token_shards(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="session")
def codec_dir(tmp_path_factory) -> Path:
    """A random tiny codec, exported (``tests.helpers.tokens.make_codec``)."""
    return make_codec(tmp_path_factory.mktemp("codec") / "codec")


@pytest.fixture(scope="session")
def tokens(audio_shards, codec_dir, tmp_path_factory) -> Path:
    """``audio_shards`` tokenized by ``codec_dir`` in one uninterrupted single-process run."""
    from data_prep import tokenize

    out = tmp_path_factory.mktemp("tokens") / "tokens"
    tokenize.main(["--shards", str(audio_shards), "--codec", str(codec_dir), "--out", str(out), *TOKENIZE_BATCHING])
    return out


@pytest.fixture(scope="session")
def latents(audio_shards, codec_dir, tmp_path_factory) -> Path:
    """``audio_shards`` encoded by ``codec_dir`` to latent shards (``data_prep.tokenize --latents``:
    16 channels at 50 Hz)."""
    from data_prep import tokenize

    out = tmp_path_factory.mktemp("latents") / "latents"
    tokenize.main(["--shards", str(audio_shards), "--codec", str(codec_dir), "--out", str(out), "--latents",
                   *TOKENIZE_BATCHING])
    return out


# -- worker pools -------------------------------------------------------------------------------
def _pool(*args, **kwargs):
    pool = WorkerPool(*args, **kwargs)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def pool1():
    """One bare process (no launcher variables), for single-process references."""
    yield from _pool(1, launcher_env=False)


@pytest.fixture(scope="session")
def pool2():
    """Two ranks on one node, as ``torchrun --nproc-per-node 2`` starts them."""
    yield from _pool(2)


@pytest.fixture(scope="session")
def pool2x2():
    """Four ranks as two nodes of two (ranks 0-1 node 0, ranks 2-3 node 1)."""
    yield from _pool(4, ranks_per_node=2)


# -- shared runs --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lm_straight(tmp_path_factory, token_shards, pool2) -> Path:
    """The uninterrupted run that resumed, restarted and faulted runs are compared with: the
    small LM (``LM_SMALL``), 8 steps on 2 ranks under FSDP (its config's engine), a checkpoint
    every 2 steps."""
    run_dir = tmp_path_factory.mktemp("lm_straight")
    args = lm_train_args(run_dir, token_shards, STRAIGHT_STEPS, "trainer.checkpoint_every=2")
    assert [r.value for r in pool2.run(cli, *args)] == [0, 0]
    return run_dir


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, tokens, pool1) -> Path:
    """The small LM trained 2 steps in 1 process on real codec tokens (``tokens``: 4 codebooks
    x 64; their manifest names the codec): the run that generation, pairs and DPO start from."""
    run = tmp_path_factory.mktemp("lm") / "run"
    args = lm_train_args(run, tokens, 2, "trainer.checkpoint_every=2", "model.codebook_size=64")
    assert pool1.run(cli, *args)[0].value == 0
    return run


@pytest.fixture(scope="session", autouse=True)
def _codec_run_started(request, tmp_path_factory, audio_shards):
    """Starts the shared codec run at the beginning of the session, if a selected test reads it."""
    if not request.config.stash.get(_NEEDS_CODEC_RUN, False):
        return None
    run_dir = tmp_path_factory.mktemp("codec_run") / "run"
    pool = request.getfixturevalue("pool1")
    return run_dir, pool.submit(cli, *codec_run_args(run_dir, audio_shards), timeout=1200)


@pytest.fixture(scope="session")
def codec_run(_codec_run_started) -> Path:
    """The short GAN codec run (``tests.helpers.runs.codec_run_args``): 100 steps, evaluated at
    its last step."""
    run_dir, task = _codec_run_started
    [result] = task.wait()
    assert result.value == 0, result.output[-3000:]
    return run_dir
