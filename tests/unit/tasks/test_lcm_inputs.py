"""Bad inputs of the LCM recipe, each refused before training with what is wrong and what to do:
a teacher missing, untrusted or without a complete checkpoint, a teacher of another latent shape
or codec than the shards, a diffusion task on shards that are not latents."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp

from aurora.config import ConfigError, load_config, to_yaml
from aurora.exported import ModelLoadError
from aurora.models.dit import DiT
from aurora.tasks.diffusion import DiffusionTask, DiffusionTrainConfig
from aurora.tasks.lcm import LCMTask, LCMTrainConfig


def _teacher_run(path: Path, shards: Path, *overrides: str, checkpoint: bool = True) -> Path:
    """A diffusion run directory: its config.yaml and (``checkpoint``) a checkpoint of its DiT."""
    cfg = load_config(DiffusionTrainConfig, "configs/diffusion/tiny.yaml",
                      [f"run.dir={path}", f"data.shards={shards}", "model.latent_dim=16", *overrides])
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    step = path / "checkpoints" / "step_00000001"
    if checkpoint:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save({"model": DiT(cfg.model).state_dict()}, checkpoint_id=step, no_dist=True)
    else:  # a save that died before its metadata
        step.mkdir(parents=True)
    return step if checkpoint else path


def _student(latents: Path, teacher, world, *overrides: str):
    cfg = load_config(LCMTrainConfig, "configs/lcm/tiny.yaml",
                      ["run.dir=unused", f"data.shards={latents}", "model.latent_dim=16", f"model.teacher={teacher}",
                       *overrides])
    return LCMTask(cfg, world)


def test_a_good_teacher_is_taken(tmp_path, latents, world_of_one):
    task = _student(latents, _teacher_run(tmp_path / "t", latents), world_of_one)
    assert task.solver.timesteps[[0, -1]].tolist() == [19, 999]


def test_missing_untrusted_or_incomplete_teachers_are_refused(tmp_path, latents, world_of_one):
    with pytest.raises(ModelLoadError, match=r"model.teacher .*none does not exist: give an exported dit folder"):
        _student(latents, tmp_path / "none", world_of_one)
    good = _teacher_run(tmp_path / "t", latents)
    with pytest.raises(ModelLoadError, match=r"is a training run directory, not an exported model.*pass "
                                             r"run.trust_checkpoint=true"):
        _student(latents, good, world_of_one, "run.trust_checkpoint=false")
    with pytest.raises(ModelLoadError, match=r"model.teacher no checkpoint at .*: train the teacher until it saves a "
                                             r"checkpoint \(trainer.checkpoint_every\)"):
        _student(latents, _teacher_run(tmp_path / "incomplete", latents, checkpoint=False), world_of_one)


def test_a_teacher_of_another_latent_shape_or_codec_is_refused(tmp_path, latents, world_of_one):
    narrow = _teacher_run(tmp_path / "narrow", latents, "model.backbone.hidden_size=32")
    with pytest.raises(ConfigError, match=r"the student's shape differs from its teacher .*: set the model section"):
        _student(latents, narrow, world_of_one)

    # The same shapes, but latents of another codec: a copy of the shards whose manifest names another one.
    other = tmp_path / "other_codec"
    shutil.copytree(latents, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["codec_id"] = "0123456789abcdef"
    (other / "manifest.json").write_text(json.dumps(manifest))
    teacher = _teacher_run(tmp_path / "other", other)
    with pytest.raises(ConfigError, match=r"the teacher learnt the latents of codec 0123456789abcdef .*, but "
                                          r"data.shards=.* holds those of codec [0-9a-f]{16}: distil on latents of the "
                                          r"teacher's codec"):
        _student(latents, teacher, world_of_one)

    wide = load_config(DiffusionTrainConfig, "configs/diffusion/tiny.yaml",
                       ["run.dir=unused", f"data.shards={latents}", "model.latent_dim=32"])
    with pytest.raises(ConfigError, match=r"model.latent_dim=32 but the latent shards in .* have latent_dim=16: set "
                                          r"model.latent_dim to match"):
        DiffusionTask(wide, world_of_one)


def test_a_diffusion_task_on_token_shards_says_how_to_make_latents(tokens, world_of_one):
    cfg = load_config(DiffusionTrainConfig, "configs/diffusion/tiny.yaml", ["run.dir=unused", f"data.shards={tokens}"])
    with pytest.raises(ConfigError, match=r"holds tokens shards, not latent shards: make them with `python -m "
                                          r"data_prep.tokenize --shards AUDIO --codec CODEC --out DIR --latents`"):
        DiffusionTask(cfg, world_of_one)



def test_generation_settings_outside_what_a_run_supports_are_refused(tmp_path, latents):
    from aurora.latent_generation import check_settings

    student = load_config(LCMTrainConfig, "configs/lcm/tiny.yaml", ["run.dir=x", "model.teacher=x"])
    assert check_settings(student, None, None, None, 2.0).__dict__ == {"steps": 2, "cfg_scale": 4.0, "sampler": "lcm",
                                                                         "seconds": 2.0}
    for steps in (0, 51):
        with pytest.raises(ConfigError, match=rf"--steps {steps}: an LCM student samples in 1 to 50 steps"):
            check_settings(student, steps, None, None, 2.0)
    with pytest.raises(ConfigError, match=r"--cfg-scale 13: this student was distilled for guidance scales in \[4, 12\]"):
        check_settings(student, 2, 13.0, None, 2.0)
    with pytest.raises(ConfigError, match=r"--sampler ddim: an LCM student samples with LCM multistep sampling only"):
        check_settings(student, 2, None, "ddim", 2.0)
    teacher = load_config(DiffusionTrainConfig, "configs/diffusion/tiny.yaml", ["run.dir=x"])
    assert check_settings(teacher, None, None, "dpm", 2.0).__dict__ == {"steps": 50, "cfg_scale": 4.0, "sampler": "dpm",
                                                                          "seconds": 2.0}
    with pytest.raises(ConfigError, match=r"--steps 1001: a diffusion teacher samples in 1 to 1000 steps"):
        check_settings(teacher, 1001, None, None, 2.0)
    with pytest.raises(ConfigError, match=r"--sampler lcm: a diffusion teacher samples with ddim or dpm"):
        check_settings(teacher, 2, None, "lcm", 2.0)
