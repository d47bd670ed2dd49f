"""Caption dropout in the LM recipe: the share of empty captions, the same on every rank, a new
draw each step, none in evaluation, and the count carried by a checkpoint."""

import pytest
import torch

from aurora.config import load_config
from aurora.distributed import DistEnv
from aurora.models.audio_lm import encode_text, unconditional_text
from aurora.tasks.lm import LMTask, LMTrainConfig
from data_prep.synth_tokens import write_token_shards

KEYS = [f"clip{i:05d}" for i in range(4000)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_token_shards(tmp_path_factory.mktemp("tokens"), num_clips=8)


def make_task(shards, rank: int = 0, *overrides: str) -> LMTask:
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [f"data.shards={shards}", *overrides])
    return LMTask(cfg, DistEnv(rank, 2, rank, 2, 0, 1, torch.device("cpu"), "gloo"))


def dropped(task: LMTask, training: bool = True) -> torch.Tensor:
    """Which of KEYS' examples get the empty caption."""
    text = task._text({"keys": KEYS, "text": ["a caption"] * len(KEYS)}, training)
    is_empty = (text == unconditional_text(1, task.cfg.model.max_text_len)).all(dim=1)
    is_kept = (text == encode_text(["a caption"], task.cfg.model.max_text_len)).all(dim=1)
    assert (is_empty | is_kept).all()
    return is_empty


def test_a_tenth_of_the_captions_are_dropped_by_default(shards):
    """4000 draws at p = 0.1: the share is within 0.03 (4.5 standard deviations)."""
    assert dropped(make_task(shards)).float().mean().item() == pytest.approx(0.1, abs=0.03)


def test_every_rank_drops_the_same_clips_and_each_step_draws_anew(shards):
    first, second = make_task(shards, rank=0), make_task(shards, rank=1)
    assert torch.equal(dropped(first), dropped(second))
    before = dropped(first)
    first.after_step({}, 1)
    assert not torch.equal(dropped(first), before)


def test_evaluation_and_zero_dropout_keep_every_caption(shards):
    assert not dropped(make_task(shards), training=False).any()
    assert not dropped(make_task(shards, 0, "model.caption_dropout=0")).any()


def test_the_step_count_is_restored_from_a_checkpoint(shards):
    trained = make_task(shards)
    trained.after_step({}, 7)
    resumed = make_task(shards)
    resumed.load_state_dict(trained.state_dict())
    assert torch.equal(dropped(resumed), dropped(trained))
