"""A non-finite loss on one rank skips the step on every rank, and is counted."""

import torch

from aurora.models.audio_lm import AudioLM
from aurora.tasks.lm import LMTrainConfig
from aurora.config import load_config
from aurora.runs import load_model_weights
from tests.conftest import read_metrics, run_cmd
from tests.test_resume import SMALL


def _weights(run_dir, step: int) -> dict:
    cfg = load_config(LMTrainConfig, run_dir / "config.yaml")
    model = AudioLM(cfg.model)
    load_model_weights(model, run_dir / "checkpoints" / f"step_{step:08d}")
    return model.state_dict()


def test_nan_loss_on_one_rank_skips_everywhere(tmp_path, token_shards):
    run = tmp_path / "nan"
    overrides = [o for o in SMALL if not o.startswith("trainer.checkpoint_every")]
    run_cmd(["-m", "aurora", "train", "configs/lm/tiny.yaml", f"run.dir={run}", f"data.shards={token_shards}",
             "trainer.max_steps=5", "trainer.checkpoint_every=1", "engine.name=fsdp", *overrides],
            nproc=2, env={"AURORA_FAULT_NAN_LOSS": "3@1"})
    metrics = {m["step"]: m for m in read_metrics(run)}
    assert [metrics[s]["skipped_steps"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert metrics[3]["loss"] != metrics[3]["loss"]  # NaN: the mean over ranks includes rank 1's
    assert all(torch.isfinite(torch.tensor(metrics[s]["loss"])) for s in (4, 5))
    before, skipped, after = _weights(run, 2), _weights(run, 3), _weights(run, 4)
    for name in before:
        assert torch.equal(before[name], skipped[name]), name
    assert any(not torch.equal(skipped[n], after[n]) for n in before)
