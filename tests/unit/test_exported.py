"""Models from elsewhere (``aurora.exported``): exported folders load without any pickle, and a
training run given as an input is refused unless trusted, so a crafted checkpoint runs nothing."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from aurora.exported import CONFIG, ModelLoadError, load_weights, read_config
from aurora.generation import LM, LMSampler, export_lm
from aurora.models.audio_lm import AudioLM, AudioLMConfig
from aurora.runs import LATEST, SHARED_FILE, rank_file
from aurora.tasks.base import FrozenPartSpec
from aurora.tasks.codec import load_codec
from aurora.train.loop import Trainer
from tests.helpers.runs import cli, run_main

STEP = "step_00000002"


class _Touch:
    """Unpickled, it creates ``marker``: stands for any code a crafted pickle runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _crafted_run(root: Path, recipe: str) -> tuple[Path, Path]:
    """A run directory of ``recipe`` whose only checkpoint's DCP ``.metadata`` is a crafted
    pickle; and the marker file it creates when unpickled."""
    run, marker = root / f"{recipe}_run", root / "pwned"
    checkpoint = run / "checkpoints" / STEP
    checkpoint.mkdir(parents=True)
    config = OmegaConf.load(f"configs/{recipe}/tiny.yaml")
    config.run.dir, config.data.shards = str(run), str(root / "shards")
    OmegaConf.save(config, run / "config.yaml")
    (checkpoint / ".metadata").write_bytes(pickle.dumps(_Touch(marker)))
    torch.save({}, rank_file(checkpoint, 0, 1))
    torch.save({}, checkpoint / SHARED_FILE)
    (run / "checkpoints" / LATEST).write_text(STEP + "\n")
    return run, marker


def _refused(message: str) -> bool:
    return "is a training run directory" in message and "pickles" in message and "trust" in message


def test_a_crafted_run_is_refused_untrusted_and_would_run_code_trusted(tmp_path):
    run, marker = _crafted_run(tmp_path, "codec")
    with pytest.raises(ModelLoadError, match=r"is a training run directory.*can run any code.*pass --trust-check"):
        load_codec(run, what="--codec")
    assert not marker.exists()
    with pytest.raises(BaseException):  # DCP's CheckpointException: the unpickled metadata is no Metadata
        load_codec(run, trust=True)  # what --trust-checkpoint opens: DCP unpickles .metadata
    assert marker.exists()


def test_every_entry_point_refuses_an_untrusted_run(tmp_path, audio_shards, capsys):
    codec_run, marker = _crafted_run(tmp_path, "codec")
    lm_run, _ = _crafted_run(tmp_path, "lm")
    out = str(tmp_path / "out")
    calls = {
        "tokenize": lambda: run_main("data_prep.tokenize", "--shards", str(audio_shards), "--codec", str(codec_run),
                                     "--out", out),
        "codec_eval": lambda: run_main("tools.codec_eval", str(codec_run), "--shards", str(audio_shards)),
        "generate": lambda: cli("generate", str(lm_run), "--caption", "a tone", "--out", out),
        "make_pairs": lambda: run_main("data_prep.make_pairs", "--lm", str(lm_run), "--prompts", out, "--out", out),
        "ref_logprobs": lambda: run_main("data_prep.ref_logprobs", "--lm", str(lm_run), "--pairs", out),
    }
    for name, call in calls.items():
        assert call() == 2, name
        assert _refused(capsys.readouterr().err), name
    with pytest.raises(ModelLoadError, match="model.init_from .* pass run.trust_checkpoint=true"):
        read_config(lm_run, LM, trust=False, what="model.init_from", how_to_trust="run.trust_checkpoint=true")
    spec = FrozenPartSpec("teacher", AudioLM(AudioLMConfig()), [], updated=False, source=str(lm_run))
    untrusting = SimpleNamespace(cfg=SimpleNamespace(run=SimpleNamespace(trust_checkpoint=False)))
    with pytest.raises(ModelLoadError, match="the source of frozen part 'teacher' .*run.trust_checkpoint=true"):
        Trainer._prepare_frozen(untrusting, spec)
    assert not marker.exists()


@pytest.fixture
def no_pickle(monkeypatch):
    """Any unpickling fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("an exported folder was read with pickle")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)


def test_exported_models_load_without_any_pickle(tmp_path, codec_dir, no_pickle):
    torch.manual_seed(0)
    lm = AudioLM(AudioLMConfig(codebook_size=64))
    codec = load_codec(codec_dir).codec
    export_lm(lm, codec, tmp_path / "lm")
    sampler = LMSampler(tmp_path / "lm", torch.device("cpu"), trust=False)
    assert sampler.config == lm.config
    assert all(torch.equal(a, b) for a, b in zip(sampler.lm.state_dict().values(), lm.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(sampler.codec.state_dict().values(), codec.state_dict().values()))
    teacher = AudioLM(AudioLMConfig(codebook_size=64))
    load_weights(teacher, tmp_path / "lm", trust=False, what="teacher")
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), lm.state_dict().values()))


def test_an_export_of_another_kind_or_shape_is_refused_clearly(tmp_path, codec_dir):
    with pytest.raises(ModelLoadError, match="holds a 'codec' model, not a 'audio_lm'"):
        read_config(codec_dir, LM, trust=False, what="--lm")
    export_lm(AudioLM(AudioLMConfig(codebook_size=64)), load_codec(codec_dir).codec, tmp_path / "lm")
    with pytest.raises(ModelLoadError, match="teacher .*lm.s weights do not fit this model"):
        load_weights(AudioLM(AudioLMConfig(codebook_size=32)), tmp_path / "lm", trust=False, what="teacher")
    (tmp_path / "lm" / CONFIG).write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json is not JSON"):
        read_config(tmp_path / "lm", LM, trust=False, what="--lm")
