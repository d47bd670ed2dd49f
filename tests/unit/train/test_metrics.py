"""The metrics logger: media go to JSONL as paths and to wandb as files."""

import json

import numpy as np
import soundfile as sf
from matplotlib import pyplot as plt

from aurora.config.schema import LoggingConfig
from aurora.train.metrics import MetricsLogger
from aurora.train.nonfatal import NonFatal


def test_media_paths_go_to_jsonl_as_strings_and_to_wandb_as_files(tmp_path, monkeypatch):
    """Evaluation returns paths of FLAC and PNG files: metrics.jsonl records the path, wandb
    stores the file as audio or image media."""
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
