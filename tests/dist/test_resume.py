"""A run stopped and resumed ends exactly where an uninterrupted run ends, on every engine's
checkpoints, the GAN codec's two DeepSpeed engines included; DeepSpeed resumes ZeRO-1/2 on another
world size, and refuses ZeRO-3 clearly."""

import os
import signal
import threading
import time

import pytest
import torch

from aurora.train.run_lock import RunLock
from tests.helpers.runs import (CODEC_SMALL_GAN, LM_SMALL_MODEL, STRAIGHT_STEPS, assert_same_weights, cli,
                                exported_weights, lm_train_args, read_metrics, weights)
from tests.helpers.steps import fixed_batch_steps


def _train(pool, run_dir, shards, max_steps, *overrides):
    results = pool.run(cli, *lm_train_args(run_dir, shards, max_steps, *overrides))
    assert [r.value for r in results] == [0] * pool.world, [r.output[-2000:] for r in results]
    return results[0].output


def _assert_resumed_like_straight(straight, resumed) -> None:
    assert_same_weights(weights(straight), weights(resumed))
    m_straight, m_resumed = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in m_resumed] == list(range(1, STRAIGHT_STEPS + 1))
    for x, y in zip(m_straight[4:], m_resumed[4:]):
        for key in ("loss", "lr", "grad_norm", "ce_q0", "ce_q3"):
            assert x[key] == y[key], (x["step"], key)
    # The sample stream continued rather than restarting: steps 5-8 differ from steps 1-4.
    assert [m["loss"] for m in m_straight[:4]] != [m["loss"] for m in m_straight[4:]]


def test_fsdp_resume_is_bit_identical(tmp_path, token_shards, lm_straight, pool2):
    """Stopped at step 4 and resumed to 8: the shared straight run's (FSDP) weights and metrics.
    Between the two, while another job holds the run directory, a job on it is refused."""
    resumed = tmp_path / "resumed"
    _train(pool2, resumed, token_shards, 4)
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    with RunLock(resumed, is_main=True):  # free: the job released it when it ended (its ranks live on)
        refused = pool2.run(cli, *lm_train_args(resumed, token_shards, STRAIGHT_STEPS))
    assert [r.value for r in refused] == [2, 2]
    assert all(f"run.dir={resumed} is in use by another job (host " in r.output for r in refused)
    assert "resumed from" in _train(pool2, resumed, token_shards, STRAIGHT_STEPS)
    assert (resumed / "checkpoints" / "latest").read_text().strip() == f"step_{STRAIGHT_STEPS:08d}"
    _assert_resumed_like_straight(lm_straight, resumed)


def signalled_on_one_rank(run_dir: str, signal_rank: int, after_steps: int, *argv: str) -> int:
    """``aurora ARGV`` on a pool rank; rank ``signal_rank`` sends itself SIGUSR1 (slurm's warning
    before the time limit) once ``after_steps`` steps are logged. The exit code."""
    def watch():
        metrics = os.path.join(run_dir, "metrics.jsonl")
        while not (os.path.isfile(metrics) and len(open(metrics).read().splitlines()) >= after_steps):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGUSR1)

    if int(os.environ["RANK"]) == signal_rank:
        threading.Thread(target=watch, daemon=True).start()
    return cli(*argv)


def test_sigusr1_on_one_rank_stops_every_rank_at_one_step_and_resumes_identically(tmp_path, token_shards, lm_straight,
                                                                                  pool2):
    """SIGUSR1 reaches rank 1 alone: both ranks checkpoint the same step and exit for requeue
    (75), and the resumed run ends with the straight run's weights."""
    run = tmp_path / "run"
    args = lm_train_args(run, token_shards, STRAIGHT_STEPS, "trainer.checkpoint_every=100")
    results = pool2.run(signalled_on_one_rank, str(run), 1, 2, *args,
                        env={"AURORA_FAULT_INJECTION": "1", "AURORA_FAULT_STEP_DELAY_S": "0.3"})
    assert [r.value for r in results] == [75, 75], [r.output[-2000:] for r in results]
    stopped = read_metrics(run)[-1]["step"]
    assert 2 <= stopped < STRAIGHT_STEPS
    # The main rank heard of it through the step's all-reduce.
    assert f"preempted at step {stopped} (signal on another rank); checkpoint step {stopped} written" in results[0].output
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:08d}"
    assert f"at step {stopped}" in _train(pool2, run, token_shards, STRAIGHT_STEPS, "trainer.checkpoint_every=100")
    assert_same_weights(weights(lm_straight), weights(run))


def test_every_async_checkpoint_holds_the_state_of_its_own_step(tmp_path, token_shards, lm_straight, pool2):
    """Async saves copy the state into CPU buffers made at the first save and reused by the next
    ones: each of the 4 checkpoints of an async run holds its own step's weights (those of the
    straight run's sync checkpoints), not an earlier save's."""
    run = tmp_path / "async"
    _train(pool2, run, token_shards, STRAIGHT_STEPS, "trainer.checkpoint_every=2", "trainer.async_checkpoint=true")
    for step in range(2, STRAIGHT_STEPS + 1, 2):
        assert_same_weights(weights(lm_straight, step), weights(run, step))
    second, fourth = weights(run, 2), weights(run, 4)
    assert not all(torch.equal(second[name], fourth[name]) for name in second)  # the steps did change them


@pytest.mark.parametrize("engine", [["engine.name=ddp"], ["engine.name=deepspeed", "engine.deepspeed.zero_stage=3"]],
                         ids=["ddp", "zero3"])
def test_resume_is_bit_identical(tmp_path, token_shards, lm_straight, pool2, engine):
    """DeepSpeed's checkpoint goes through its own save/load; ``weights`` merges its ZeRO-3
    partitions into the plain model. ``aurora export`` of the straight run, in one process,
    holds the weights of the same training under FSDP (``lm_straight``) within the engines'
    tolerance (``tests.helpers.steps.assert_same_steps``: they split and reduce the same sums)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(pool2, straight, token_shards, STRAIGHT_STEPS, *engine)
    _train(pool2, resumed, token_shards, 4, *engine)
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert "resumed from" in _train(pool2, resumed, token_shards, STRAIGHT_STEPS, *engine)
    _assert_resumed_like_straight(straight, resumed)
    exported, fsdp = exported_weights(straight, tmp_path / "export"), exported_weights(lm_straight, tmp_path / "fsdp")
    assert_same_weights(exported, weights(straight))
    assert exported.keys() == fsdp.keys()
    for name in fsdp:
        torch.testing.assert_close(exported[name], fsdp[name], rtol=2e-4, atol=2e-5, msg=name)


def _steps_from(pool, checkpoint, run_dir, shards, *overrides) -> dict:
    """``fixed_batch_steps`` (3 steps on fixed global batches) from ``checkpoint``."""
    args = [f"run.dir={run_dir}", f"data.shards={shards}", *LM_SMALL_MODEL, "trainer.progress_bar=false", *overrides]
    return pool.run(fixed_batch_steps, "configs/lm/tiny.yaml", args, resume=checkpoint)[0].value


def test_deepspeed_resumes_on_another_world_size_through_the_universal_format(tmp_path, token_shards, pool1, pool2):
    """A ZeRO-2 checkpoint of 2 ranks, resumed by 1: converted to DeepSpeed's universal format,
    its weights and AdamW state train on exactly as when 2 ranks resume it."""
    zero2 = ["engine.name=deepspeed", "engine.deepspeed.zero_stage=2"]
    _train(pool2, tmp_path / "run", token_shards, 4, *zero2)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004"
    same = _steps_from(pool2, checkpoint, tmp_path / "same", token_shards, *zero2)
    other = _steps_from(pool1, checkpoint, tmp_path / "other", token_shards, *zero2)
    assert (checkpoint / "deepspeed" / "universal").is_dir()
    assert other["losses"] == pytest.approx(same["losses"], rel=2e-5)
    for name in same["params"]:
        torch.testing.assert_close(other["params"][name], same["params"][name], rtol=2e-4, atol=2e-6, msg=name)
    fresh = _steps_from(pool1, None, tmp_path / "fresh", token_shards, *zero2)
    assert abs(fresh["losses"][0] - same["losses"][0]) > 1e-4  # the checkpoint's weights were used


def test_zero3_resume_on_another_world_size_is_refused_clearly(tmp_path, token_shards, pool1, pool2):
    zero3 = ["engine.name=deepspeed", "engine.deepspeed.zero_stage=3"]
    _train(pool2, tmp_path, token_shards, 4, *zero3)
    [refused] = pool1.run(cli, *lm_train_args(tmp_path, token_shards, 6, *zero3), check=False)
    assert refused.exception is not None, refused.output[-3000:]
    assert ("was written by 2 ranks and this job has 1: engine.name=deepspeed with engine.deepspeed.zero_stage=3 "
            "resumes only on the same number of ranks") in str(refused.exception)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000004"  # nothing lost


def test_gan_codec_resume_on_deepspeed_is_bit_identical(tmp_path, audio_shards, pool2):
    """The GAN codec on ZeRO-2 (one DeepSpeed engine per model, each with its own folder in the
    checkpoint): stopped at step 2 and resumed to 3, both models and every logged number equal an
    uninterrupted run's. The discriminator starts at step 2, so its engine first goes through a
    step without a loss. (ZeRO-3 passes the same check; it takes twice as long on CPU.)"""
    def train(run_dir, max_steps):
        args = ["train", "configs/codec/tiny.yaml", f"run.dir={run_dir}", f"data.shards={audio_shards}",
                f"trainer.max_steps={max_steps}", "trainer.checkpoint_every=2", "trainer.log_every=1",
                "trainer.progress_bar=false", "data.segment_seconds=0.2", "data.batch_size=2", "data.num_workers=0",
                "eval_clips=0", "gan.start_step=1", "engine.name=deepspeed", "engine.deepspeed.zero_stage=2",
                *CODEC_SMALL_GAN]
        assert [r.value for r in pool2.run(cli, *args)] == [0, 0]

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, 3)
    train(resumed, 2)
    assert (resumed / "checkpoints" / "step_00000002" / "parts" / "discriminator" / "state").is_dir()
    train(resumed, 3)
    for part in (None, "discriminator"):
        assert_same_weights(weights(straight, part=part), weights(resumed, part=part))
    m_straight, m_resumed = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in m_resumed] == [1, 2, 3]
    for key in ("loss", "grad_norm", "discriminator/loss", "discriminator/grad_norm", "loss/mel"):
        assert m_straight[2][key] == m_resumed[2][key], key
    assert m_straight[0]["discriminator/grad_norm"] == 0 < m_straight[1]["discriminator/grad_norm"]
