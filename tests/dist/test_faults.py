"""Faults that a job survives without a restart, injected by the hooks of aurora/train/faults.py
into the ``lm_straight`` job on the session's 2 ranks: full disks, failing side work (metrics,
wandb, evaluation), non-finite losses. Each ends with what matters: nothing lost, the last good
weights, the weights of an uninterrupted run. Faults that end processes are
tests/e2e/test_fault_injection.py's."""

from aurora.train.faults import SWITCH as FAULTS
from tests.helpers.runs import STRAIGHT_STEPS as STEPS, assert_same_weights, cli, lm_train_args, read_metrics, weights


def job(pool, run_dir, shards, *overrides, env, exit_code=0):
    """The ``lm_straight`` job (same config and steps) in ``run_dir`` with fault hooks ``env``;
    every rank must end with ``exit_code``."""
    results = pool.run(cli, *lm_train_args(run_dir, shards, STEPS, "trainer.checkpoint_every=2", *overrides),
                       env={FAULTS: "1", **env})
    assert [r.value for r in results] == [exit_code] * pool.world, [r.output[-3000:] for r in results]
    return results


# 5 -----------------------------------------------------------------------------------------
def _checkpoint_bytes(run_dir) -> int:
    return sum(f.stat().st_size for f in (run_dir / "checkpoints" / "step_00000002").rglob("*") if f.is_file())


def test_full_disk_frees_older_checkpoints_and_retries(tmp_path, token_shards, lm_straight, pool2):
    quota = int(2.5 * _checkpoint_bytes(lm_straight))
    [result, _] = job(pool2, tmp_path, token_shards, env={"AURORA_FAULT_DISK_QUOTA_BYTES": str(quota)})
    assert "disk full while saving step_00000006; deleted 1 older checkpoints" in result.output
    assert "errors/checkpoint" not in read_metrics(tmp_path)[-1]  # every retry succeeded
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    assert_same_weights(weights(lm_straight), weights(tmp_path))


def test_full_disk_skips_the_save_and_keeps_the_last_complete_checkpoint(tmp_path, token_shards, lm_straight, pool2):
    quota = int(1.5 * _checkpoint_bytes(lm_straight))
    [result, _] = job(pool2, tmp_path, token_shards, env={"AURORA_FAULT_DISK_QUOTA_BYTES": str(quota)}, exit_code=1)
    assert "finished step 8 but its checkpoint failed" in result.output  # no final checkpoint: exit code 1
    assert "checkpoint step_00000004 disk full; skipped it on every rank, latest stays at step_00000002" in result.output
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # training went on
    assert metrics[-1]["errors/checkpoint"] == 3  # steps 4, 6 and 8
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000002"]
    assert_same_weights(weights(lm_straight, 2), weights(tmp_path))


# 6 -----------------------------------------------------------------------------------------
def test_failures_in_metrics_wandb_and_eval_are_counted_and_the_run_goes_on(tmp_path, token_shards, lm_straight, pool2):
    [result, _] = job(pool2, tmp_path, token_shards, f"data.eval_shards={token_shards}", "trainer.eval_every=4",
                      "trainer.eval_batches=2", "logging.wandb=true", "logging.wandb_mode=offline",
                      env={"AURORA_FAULT_RAISE": "metrics@3,wandb@2,eval@4", "WANDB_SILENT": "true"})
    metrics = {m["step"]: m for m in read_metrics(tmp_path)}
    assert sorted(metrics) == [1, 2, 4, 5, 6, 7, 8]  # step 3's line was lost, and only it
    assert metrics[4]["errors/metrics"] == 1 and metrics[4]["errors/wandb"] == 1 and metrics[4]["errors/eval"] == 1
    assert "eval/loss" not in metrics[4] and metrics[8]["eval/loss"] > 0
    for kind in ("metrics", "wandb", "eval"):
        assert result.output.count(f"{kind} failed; training continues") == 1, kind
    assert "fault injected at eval@4" in result.output
    assert_same_weights(weights(lm_straight), weights(tmp_path))


# 7 -----------------------------------------------------------------------------------------
def test_consecutive_nonfinite_steps_stop_with_the_last_good_weights(tmp_path, token_shards, pool2):
    [result, _] = job(pool2, tmp_path, token_shards, "trainer.max_bad_steps=3", "trainer.checkpoint_every=1",
                      env={"AURORA_FAULT_NAN_LOSS": "3,4,5@1"}, exit_code=3)
    assert "3 consecutive non-finite steps (steps 3-5, trainer.max_bad_steps=3)" in result.output
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    assert [m["skipped_steps"] for m in read_metrics(tmp_path)] == [0, 0, 1, 2, 3]
    assert_same_weights(weights(tmp_path, 2), weights(tmp_path, 5))
