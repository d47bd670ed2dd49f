"""Captions in the LM recipe. Dropout: the share of empty captions, the same on every rank, a
new draw each step, none in evaluation, and the count carried by a checkpoint. Long captions:
refused before training from the manifest or at their batch, or cut and counted."""

import json

import pytest
import torch

from aurora.config import ConfigError, load_config
from aurora.data import DataError
from aurora.distributed import DistEnv
from aurora.models.audio_lm import encode_text, truncate_utf8, unconditional_text
from aurora.tasks.lm import LMTask, LMTrainConfig
from data_prep.synth_tokens import write_token_shards

KEYS = [f"clip{i:05d}" for i in range(4000)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_token_shards(tmp_path_factory.mktemp("tokens"), num_clips=8)


def make_task(shards, rank: int = 0, *overrides: str, eval_shards=None) -> LMTask:
    evals = [f"data.eval_shards={eval_shards}"] if eval_shards else []
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [f"data.shards={shards}", *evals, *overrides])
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


LONG = "a tone that rises and falls " * 4  # 112 bytes; the tiny config's LM reads 78


def _long_every_fourth(i: int) -> str:
    return LONG if i % 4 == 0 else f"clip {i}"


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory):
    return write_token_shards(tmp_path_factory.mktemp("long"), num_clips=8, caption=_long_every_fourth)


def test_shards_with_longer_captions_are_refused_before_training(shards, long_shards):
    with pytest.raises(ConfigError, match=rf"data.shards={long_shards} holds captions of up to 112 bytes \(its "
                                          r"manifest's text_bytes_max\), but model.max_text_len=80 reads at most 78: "
                                          r"raise model.max_text_len .* or set model.long_text=truncate"):
        make_task(long_shards)
    with pytest.raises(ConfigError, match="data.eval_shards=.* holds captions of up to 112 bytes"):
        make_task(shards, eval_shards=long_shards)
    assert make_task(long_shards, 0, "model.max_text_len=114").cfg.model.max_text_len == 114


def test_without_a_manifest_record_the_first_batch_with_one_is_refused(tmp_path):
    shards = write_token_shards(tmp_path, num_clips=8, caption=_long_every_fourth)
    manifest = json.loads((shards / "manifest.json").read_text())
    del manifest["text_bytes_max"]  # as shards written before the record was kept
    (shards / "manifest.json").write_text(json.dumps(manifest))
    task = make_task(shards)
    batch = {"keys": ["clip00001", "clip00004"], "text": ["clip 1", LONG]}
    with pytest.raises(DataError, match=r"sample clip00004 has a caption of 112 bytes; model.max_text_len=80 reads "
                                        r"at most 78: raise model.max_text_len"):
        task._text(batch, training=True)
    with pytest.raises(DataError, match="sample clip00004"):
        task._text(batch, training=False)


def test_truncate_cuts_on_a_character_boundary_and_counts_in_training_only(long_shards):
    task = make_task(long_shards, 0, "model.long_text=truncate", "model.caption_dropout=0")
    accented = "é" * 50  # 100 bytes of 2-byte characters: 78 bytes would split none, 77 would
    batch = {"keys": ["a", "b", "c"], "text": [LONG, "short", accented]}
    text = task._text(batch, training=True)
    assert truncate_utf8(accented, 77) == ("é" * 38).encode()
    assert torch.equal(text, encode_text([LONG[:78], "short", "é" * 39], 80))
    assert task.counters() == {"data/truncated_text": 2.0}
    task._text(batch, training=False)
    assert task.counters() == {"data/truncated_text": 2.0}
    resumed = make_task(long_shards, 0, "model.long_text=truncate")
    resumed.load_state_dict(task.state_dict())
    assert resumed.counters() == {"data/truncated_text": 2.0}
