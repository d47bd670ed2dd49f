"""Config loading: YAML + overrides onto the recipe's schema, and one-line errors."""

import pytest

from aurora.config import ConfigError, load_config, to_yaml
from aurora.config.schema import EngineName
from aurora.tasks.codec import CodecTrainConfig
from aurora.tasks.lm import LMTrainConfig


def test_yaml_and_overrides():
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml",
                      ["trainer.max_steps=7", "engine.name=ddp", "optim.betas=[0.8,0.9]", "run.dir=x"])
    assert cfg.trainer.max_steps == 7
    assert cfg.engine.name == EngineName.ddp
    assert cfg.optim.betas == [0.8, 0.9]
    assert cfg.model.backbone.num_hidden_layers == 4  # from the YAML
    again = load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["trainer.max_steps=7", "engine.name=ddp",
                                                                "optim.betas=[0.8,0.9]", "run.dir=x"])
    assert to_yaml(cfg) == to_yaml(again)


@pytest.mark.parametrize("override, expected", [
    ("trainer.nope=1", "unknown key 'trainer.nope'"),
    ("nope=1", "unknown key 'nope'"),
    ("model.backbone.hidden=3", "unknown key 'model.backbone.hidden'"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("engine.precision=fp8", "engine.precision"),
    ("trainer.max_steps", "must look like key.sub=value"),
    ("trainer.hang_timeout_s=3000", "trainer.hang_timeout_s (3000) must be shorter than dist.timeout_s (2400)"),
    ("trainer.eval_every=3", "trainer.eval_every (3) must be a multiple of trainer.checkpoint_every"),
    ("trainer.eval_every=400", "trainer.eval_every is set but data.eval_shards is not"),
])
def test_errors_are_one_line_and_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(LMTrainConfig, "configs/lm/tiny.yaml", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_allowed_keys_are_listed():
    with pytest.raises(ConfigError, match="keys allowed in 'optim': name, lr, betas, momentum"):
        load_config(CodecTrainConfig, "configs/codec/tiny.yaml", ["optim.learning_rate=1"])


def test_required_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: codec\n")
    with pytest.raises(ConfigError, match="'data.shards', 'run.dir' required"):
        load_config(CodecTrainConfig, path)


def test_model_validation_surfaces(tmp_path):
    with pytest.raises((ConfigError, ValueError), match="codebook_size"):
        load_config(CodecTrainConfig, "configs/codec/tiny.yaml", ["model.codebook_size=100000"])
