"""A training run resumed on another number of ranks trains on the rest of the data epoch:
no sample lost, none repeated (recorded keys across the change). The ranks come from the
session's pools (and a pool of three here); a real launcher's shrink after a lost node is
tests/e2e/test_fault_injection.py's."""

import pytest

from tests.helpers.pool import WorkerPool
from tests.helpers.runs import cli, keys_by_step, lm_train_args, read_metrics

BATCH = 2  # 32 token clips; every count below divides evenly, so the epoch ends on a step


@pytest.fixture(scope="module")
def pool3():
    pool = WorkerPool(3)
    yield pool
    pool.close()


def _train(pool, run_dir, shards, max_steps) -> str:
    results = pool.run(cli, *lm_train_args(run_dir, shards, max_steps, f"data.batch_size={BATCH}", "data.num_workers=0",
                                           "trainer.record_sample_keys=true", "trainer.checkpoint_every=2",
                                           "engine.name=fsdp"))
    assert [r.value for r in results] == [0] * pool.world
    return results[0].output


@pytest.mark.parametrize("before, after", [(4, 2), (2, 3)])
def test_elastic_resume_covers_the_epoch_once(request, tmp_path, token_shards, before, after):
    # before ranks take 2 steps (4 x 2 x 2 = 16 or 2 x 2 x 2 = 8 clips); after ranks share the
    # rest (16 = 2 x 4 x 2, or 24 = 3 x 4 x 2): 4 more steps end the epoch exactly.
    pools = {2: "pool2", 3: "pool3", 4: "pool2x2"}
    _train(request.getfixturevalue(pools[before]), tmp_path, token_shards, 2)
    out = _train(request.getfixturevalue(pools[after]), tmp_path, token_shards, 6)
    assert f"elastic resume: {before} ranks saved step_00000002, {after} continue it" in out
    steps = keys_by_step(tmp_path)
    assert sorted(steps) == list(range(1, 7))
    assert all(len(steps[s]) == BATCH * (before if s <= 2 else after) for s in steps)
    keys = [k for s in sorted(steps) for k in steps[s]]
    assert len(keys) == 32 and len(set(keys)) == 32
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 7))
