"""A training run resumed on another number of ranks trains on the rest of the data epoch:
no sample lost, none repeated (recorded keys across the change)."""

import json

import pytest

from tests.conftest import read_metrics, run_cmd
from tests.test_resume import SMALL

BATCH = 2  # 32 token clips; every count below divides evenly, so the epoch ends on a step


def _train(run_dir, shards, max_steps, nproc):
    return run_cmd(["-m", "aurora", "train", "configs/lm/tiny.yaml", f"run.dir={run_dir}", f"data.shards={shards}",
                    f"trainer.max_steps={max_steps}", *SMALL, f"data.batch_size={BATCH}", "data.num_workers=0",
                    "trainer.record_sample_keys=true", "trainer.checkpoint_every=2", "engine.name=fsdp"],
                   nproc=nproc)


def _keys_by_step(run_dir):
    steps = {}
    for path in sorted((run_dir / "sample_keys").glob("rank_*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], []).extend(record["keys"])
    return steps


@pytest.mark.parametrize("before, after", [(4, 2), (2, 3)])
def test_elastic_resume_covers_the_epoch_once(tmp_path, token_shards, before, after):
    # before ranks take 2 steps (4 x 2 x 2 = 16 or 2 x 2 x 2 = 8 clips); after ranks share the
    # rest (16 = 2 x 4 x 2, or 24 = 3 x 4 x 2): 4 more steps end the epoch exactly.
    _train(tmp_path, token_shards, 2, before)
    out = _train(tmp_path, token_shards, 6, after)
    assert f"elastic resume: {before} ranks saved step_00000002, {after} continue it" in out.stdout
    steps = _keys_by_step(tmp_path)
    assert sorted(steps) == list(range(1, 7))
    assert all(len(steps[s]) == BATCH * (before if s <= 2 else after) for s in steps)
    keys = [k for s in sorted(steps) for k in steps[s]]
    assert len(keys) == 32 and len(set(keys)) == 32
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 7))
