"""A single process without torchrun trains, logs to JSONL and (offline) wandb, and schedules LR."""

import math

import pytest

from aurora.config import load_config
from aurora.config.schema import OptimConfig
from aurora.perf.flops import audio_lm_train_flops
from aurora.tasks.lm import LMTrainConfig
from aurora.train.schedule import lr_factor
from tests.conftest import read_metrics, run_cmd
from tests.test_resume import SMALL


def test_plain_python_run_with_wandb_offline(tmp_path, token_shards):
    run = tmp_path / "run"
    run_cmd(["-m", "aurora", "train", "configs/lm/tiny.yaml", f"run.dir={run}", f"data.shards={token_shards}",
             "trainer.max_steps=3", "logging.wandb=true", *SMALL], env={"WANDB_SILENT": "true"})
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


def test_lr_schedule_by_hand():
    warmup, decay, floor = 4, 10, 0.1
    assert [lr_factor(s, warmup, decay, floor) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, warmup, decay, floor) == pytest.approx(1.0)
    # Halfway through the cosine: floor + (1 - floor) * (1 + cos(pi/2)) / 2
    assert lr_factor(9, warmup, decay, floor) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, warmup, decay, floor) == pytest.approx(floor)
    assert lr_factor(100, warmup, decay, floor) == pytest.approx(floor)
    assert OptimConfig().decay_steps is None


def test_media_paths_go_to_jsonl_as_strings_and_to_wandb_as_files(tmp_path, monkeypatch):
    """Evaluation returns paths of FLAC and PNG files: metrics.jsonl records the path, wandb
    stores the file as audio or image media."""
    import json

    import numpy as np
    import soundfile as sf
    from matplotlib import pyplot as plt

    from aurora.config.schema import LoggingConfig
    from aurora.train.metrics import MetricsLogger
    from aurora.train.nonfatal import NonFatal

    monkeypatch.setenv("WANDB_SILENT", "true")
    clip, image = tmp_path / "k.recon.flac", tmp_path / "k.png"
    sf.write(clip, np.zeros(1600, dtype=np.float32), 16000)
    plt.imsave(image, np.zeros((4, 4)))
    nonfatal = NonFatal(0)
    logger = MetricsLogger(tmp_path, LoggingConfig(wandb=True), {}, True, 0, 1, False, nonfatal)
    logger.log(1, {"loss": 1.0, "media/k.recon.flac": clip, "media/k.png": image})
    logger.close()
    assert not nonfatal.counts
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["media/k.png"] == str(image)
    media = tmp_path / "wandb"
    assert list(media.glob("offline-run-*/files/media/audio/**/*.flac"))
    assert list(media.glob("offline-run-*/files/media/images/**/*.png"))
