"""A run stopped at step 4 and resumed to 8 ends exactly where an uninterrupted run ends."""

import pytest
import torch

from aurora.models.audio_lm import AudioLM
from aurora.tasks.lm import LMTrainConfig
from aurora.config import load_config
from aurora.runs import load_model_weights
from tests.conftest import read_metrics, run_cmd

SMALL = ["model.backbone.num_hidden_layers=2", "model.backbone.hidden_size=64",
         "model.backbone.intermediate_size=128", "data.context_frames=24", "data.batch_size=4",
         "data.num_workers=1", "optim.decay_steps=8", "optim.warmup_steps=2", "trainer.log_every=1",
         "trainer.checkpoint_every=4", "trainer.progress_bar=false", "generation.num_samples=0"]


def _train(run_dir, shards, max_steps, engine="ddp", *overrides, nproc=2, check=True):
    return run_cmd(["-m", "aurora", "train", "configs/lm/tiny.yaml", f"run.dir={run_dir}", f"data.shards={shards}",
                    f"trainer.max_steps={max_steps}", f"engine.name={engine}", *SMALL, *overrides], nproc=nproc,
                   check=check)


def _weights(run_dir) -> dict:
    cfg = load_config(LMTrainConfig, run_dir / "config.yaml")
    model = AudioLM(cfg.model)
    load_model_weights(model, run_dir)
    return model.state_dict()


@pytest.mark.parametrize("engine", [["ddp"], ["deepspeed", "engine.deepspeed.zero_stage=3"]], ids=["ddp", "zero3"])
def test_resume_is_bit_identical(tmp_path, token_shards, engine):
    """DeepSpeed's checkpoint goes through its own save/load; ``_weights`` merges its ZeRO-3
    partitions into the plain model."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(straight, token_shards, 8, *engine)
    _train(resumed, token_shards, 4, *engine)
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    out = _train(resumed, token_shards, 8, *engine)
    assert "resumed from" in out.stdout

    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    m_straight, m_resumed = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in m_resumed] == list(range(1, 9))
    for x, y in zip(m_straight[4:], m_resumed[4:]):
        for key in ("loss", "lr", "grad_norm", "ce_q0", "ce_q3"):
            assert x[key] == y[key], (x["step"], key)
    # The sample stream continued rather than restarting: steps 5-8 differ from steps 1-4.
    assert [m["loss"] for m in m_straight[:4]] != [m["loss"] for m in m_straight[4:]]


def test_fsdp_checkpoint_resumes(tmp_path, token_shards):
    run = tmp_path / "fsdp"
    _train(run, token_shards, 4, engine="fsdp")
    _train(run, token_shards, 6, engine="fsdp")
    steps = [m["step"] for m in read_metrics(run)]
    assert steps == list(range(1, 7))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"


def _steps_from(checkpoint, run_dir, shards, nproc: int, *overrides) -> dict:
    """tests/dist_scripts/train_steps.py (3 steps on fixed global batches) from ``checkpoint``."""
    out = run_dir / "steps.pt"
    args = ["tests/dist_scripts/train_steps.py", "configs/lm/tiny.yaml", str(out), f"run.dir={run_dir}",
            f"data.shards={shards}", *SMALL[:4], "trainer.progress_bar=false", *overrides]
    run_cmd(args, nproc=nproc, env={"AURORA_TEST_RESUME": str(checkpoint)} if checkpoint else None)
    return torch.load(out)


def test_deepspeed_resumes_on_another_world_size_through_the_universal_format(tmp_path, token_shards):
    """A ZeRO-2 checkpoint of 2 ranks, resumed by 1: converted to DeepSpeed's universal format,
    its weights and AdamW state train on exactly as when 2 ranks resume it."""
    zero2 = ["engine.name=deepspeed", "engine.deepspeed.zero_stage=2"]
    _train(tmp_path / "run", token_shards, 4, "deepspeed", "engine.deepspeed.zero_stage=2")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004"
    same = _steps_from(checkpoint, tmp_path / "same", token_shards, 2, *zero2)
    other = _steps_from(checkpoint, tmp_path / "other", token_shards, 1, *zero2)
    assert (checkpoint / "deepspeed" / "universal").is_dir()
    assert other["losses"] == pytest.approx(same["losses"], rel=2e-5)
    for name in same["params"]:
        torch.testing.assert_close(other["params"][name], same["params"][name], rtol=2e-4, atol=2e-6, msg=name)
    fresh = _steps_from(None, tmp_path / "fresh", token_shards, 1, *zero2)
    assert abs(fresh["losses"][0] - same["losses"][0]) > 1e-4  # the checkpoint's weights were used


def test_zero3_resume_on_another_world_size_is_refused_clearly(tmp_path, token_shards):
    _train(tmp_path, token_shards, 4, "deepspeed", "engine.deepspeed.zero_stage=3")
    out = _train(tmp_path, token_shards, 6, "deepspeed", "engine.deepspeed.zero_stage=3", nproc=1, check=False)
    assert out.returncode != 0
    assert ("was written by 2 ranks and this job has 1: engine.name=deepspeed with engine.deepspeed.zero_stage=3 "
            "resumes only on the same number of ranks") in out.stderr, out.stderr[-3000:]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000004"  # nothing lost
