"""Held-out evaluation (``trainer.eval_every``): rank 0 loads the checkpoint just written into a
plain model and reports ``eval/loss``; it changes nothing the training run carries on with."""

import torch

from aurora.config import load_config
from aurora.distributed import DistEnv
from aurora.tasks.codec import CodecTask, CodecTrainConfig
from tests.conftest import read_metrics, run_cmd


def test_codec_evaluation_is_logged_repeatable_and_leaves_the_dead_code_state_alone(tmp_path, audio_shards):
    run = tmp_path / "codec"
    run_cmd(["-m", "aurora", "train", "configs/codec/tiny.yaml", f"run.dir={run}", f"data.shards={audio_shards}",
             f"data.eval_shards={audio_shards}", "trainer.max_steps=2", "trainer.checkpoint_every=2",
             "trainer.eval_every=2", "trainer.eval_batches=2", "trainer.progress_bar=false",
             "data.segment_seconds=0.2", "data.num_workers=0"])
    logged = read_metrics(run)[-1]["eval/loss"]

    cfg = load_config(CodecTrainConfig, run / "config.yaml")
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, num_nodes=1,
                  device=torch.device("cpu"), backend="gloo")
    task = CodecTask(cfg, env)
    before = {k: v.clone() for k, v in task.state_dict()["dead_codes"].items() if isinstance(v, torch.Tensor)}
    checkpoint = run / "checkpoints" / "step_00000002"
    first, second = task.evaluate(checkpoint)["eval/loss"], task.evaluate(checkpoint)["eval/loss"]
    assert first == second and abs(first - logged) < 1e-5 * abs(logged)  # the same batches, the same weights
    after = task.state_dict()["dead_codes"]
    assert all(torch.equal(before[k], after[k]) for k in before)
