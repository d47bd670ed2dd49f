"""A non-finite loss on one rank skips the step on every rank, and is counted."""

import torch

from aurora.train.faults import SWITCH as FAULTS
from tests.helpers.runs import LM_SMALL, cli, read_metrics, weights


def test_nan_loss_on_one_rank_skips_everywhere(tmp_path, token_shards, pool2):
    run = tmp_path / "nan"
    overrides = [o for o in LM_SMALL if not o.startswith("trainer.checkpoint_every")]
    results = pool2.run(cli, "train", "configs/lm/tiny.yaml", f"run.dir={run}", f"data.shards={token_shards}",
                        "trainer.max_steps=5", "trainer.checkpoint_every=1", "engine.name=fsdp", *overrides,
                        env={FAULTS: "1", "AURORA_FAULT_NAN_LOSS": "3@1"})
    assert [r.value for r in results] == [0, 0]
    metrics = {m["step"]: m for m in read_metrics(run)}
    assert [metrics[s]["skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert metrics[3]["loss"] != metrics[3]["loss"]  # NaN: the mean over ranks includes rank 1's
    assert all(torch.isfinite(torch.tensor(metrics[s]["loss"])) for s in (4, 5))
    before, skipped, after = weights(run, 2), weights(run, 3), weights(run, 4)
    for name in before:
        assert torch.equal(before[name], skipped[name]), name
    assert any(not torch.equal(skipped[n], after[n]) for n in before)
