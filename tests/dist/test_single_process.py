"""A single process without a launcher trains and logs to JSONL and (offline) wandb."""

import math

import pytest

from aurora.config import load_config
from aurora.perf.flops import audio_lm_train_flops
from aurora.tasks.lm import LMTrainConfig
from tests.helpers.runs import CODEC_SMALL_GAN, cli, lm_train_args, read_metrics


def test_plain_python_run_with_wandb_offline(tmp_path, token_shards, pool1):
    run = tmp_path / "run"
    [result] = pool1.run(cli, *lm_train_args(run, token_shards, 3, "logging.wandb=true"), env={"WANDB_SILENT": "true"})
    assert result.value == 0
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "step_time_s", "data_wait_s", "throughput/samples_per_s",
                "throughput/frames_per_s_per_device"):
        assert key in metrics[0]
    # Model FLOPs by the formula of aurora.perf.flops over the step time; no MFU on a CPU.
    cfg = load_config(LMTrainConfig, run / "config.yaml")
    batch, frames = cfg.data.batch_size, cfg.data.context_frames
    for m in metrics:
        flops = batch * audio_lm_train_flops(cfg.model, frames)
        assert m["perf/tflops_per_device"] == pytest.approx(flops / m["step_time_s"] / 1e12, rel=1e-3)
        assert "perf/mfu" not in m
    assert (run / "config.yaml").is_file()
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run directory missing"


@pytest.mark.parametrize("recipe", ["lm", "codec"])
def test_deterministic_kernels_train_every_recipe(tmp_path, token_shards, audio_shards, pool1, recipe):
    """``trainer.deterministic=true``: every operator of the LM and of the GAN codec has a
    deterministic kernel (torch raises on one that has none), and on the CPU, whose kernels are
    deterministic anyway, the steps are the default run's exactly. The GPU's side is
    ``tools/gpu_check.sh``'s deterministic resume."""
    def args(run, *extra):
        if recipe == "lm":
            return lm_train_args(run, token_shards, 3, *extra)
        return ["train", "configs/codec/tiny.yaml", f"run.dir={run}", f"data.shards={audio_shards}",
                "trainer.max_steps=3", "trainer.progress_bar=false", "data.segment_seconds=0.2", "data.num_workers=0",
                *CODEC_SMALL_GAN, *extra]

    default, deterministic = tmp_path / "default", tmp_path / "deterministic"
    assert pool1.run(cli, *args(default))[0].value == 0
    assert pool1.run(cli, *args(deterministic, "trainer.deterministic=true"))[0].value == 0
    for a, b in zip(read_metrics(default), read_metrics(deterministic), strict=True):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"])


def _cosine_lr(peak: float, step: int, warmup: int, decay: int, floor: float) -> float:
    """The learning rate of optimizer step ``step`` (1-based) by the formula, written out."""
    if step <= warmup:
        return peak * step / warmup
    progress = min(1.0, (step - 1 - warmup) / decay)
    return peak * (floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2)


def test_every_step_logs_the_cosine_lr_across_a_resume(tmp_path, token_shards, pool1):
    """The LM's cosine schedule (3 warm-up steps, decay over the 5 after them to 0.2 of the peak)
    as the loop applies it: the logged lr of each of 8 steps, stopped after step 4 and resumed,
    equals the formula (so the scheduler's state travels in the checkpoint)."""
    run = tmp_path / "run"
    schedule = ["optim.lr=0.01", "optim.warmup_steps=3", "optim.decay_steps=5", "optim.min_lr_ratio=0.2",
                "trainer.checkpoint_every=4"]
    for steps in (4, 8):
        assert pool1.run(cli, *lm_train_args(run, token_shards, steps, *schedule))[0].value == 0
    logged = [m["lr"] for m in read_metrics(run)]
    assert logged == pytest.approx([_cosine_lr(0.01, s, 3, 5, 0.2) for s in range(1, 9)], rel=1e-9)
    assert logged[3] == pytest.approx(0.01) and logged[-1] > 0.002  # the peak after warm-up; the floor not yet


def test_both_parts_of_the_gan_codec_log_the_exponential_lr(tmp_path, audio_shards, pool1):
    """The exponential schedule of the codec presets, on the generator and the discriminator,
    each with its own peak and warm-up: a linear warm-up to the peak, then lr * gamma ** (steps
    since warm-up)."""
    run = tmp_path / "run"
    args = ["train", "configs/codec/tiny.yaml", f"run.dir={run}", f"data.shards={audio_shards}", "data.segment_seconds=0.2",
            "trainer.max_steps=4", "trainer.progress_bar=false", "trainer.log_every=1", *CODEC_SMALL_GAN,
            "optim.schedule=exponential", "optim.lr=0.001", "optim.warmup_steps=2", "optim.gamma=0.5",
            "gan.optim.schedule=exponential", "gan.optim.lr=0.004", "gan.optim.warmup_steps=1", "gan.optim.gamma=0.9"]
    assert pool1.run(cli, *args)[0].value == 0
    metrics = read_metrics(run)
    assert [m["lr"] for m in metrics] == pytest.approx([0.0005, 0.001, 0.001, 0.0005], rel=1e-9)
    assert [m["discriminator/lr"] for m in metrics] == pytest.approx([0.004, 0.004, 0.0036, 0.00324], rel=1e-9)
