"""A single process without a launcher trains and logs to JSONL and (offline) wandb."""

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
