"""Config loading: YAML + overrides onto the recipe's schema, and one-line errors."""

import pytest

from aurora.config import ConfigError, load_config, to_yaml
from aurora.config.schema import EngineName, Precision
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
    ("data.shards=[${oc.env:HOME},b]", "override 'data.shards=[${oc.env:HOME},b]' is not valid YAML (did not find "
                                       "expected ',' or ']'): quote an interpolation"),
    ("model.n_q=[1,", "override 'model.n_q=[1,' is not valid YAML"),
    ("trainer.hang_timeout_s=3000", "trainer.hang_timeout_s (3000) must be shorter than dist.timeout_s (2400)"),
    ("trainer.eval_every=3", "trainer.eval_every (3) must be a multiple of trainer.checkpoint_every"),
    ("trainer.eval_every=400", "trainer.eval_every is set but data.eval_shards is not"),
])
def test_errors_are_one_line_and_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(LMTrainConfig, "configs/lm/tiny.yaml", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, expected", [
    (["engine.deepspeed.zero_stage=4"], "engine.deepspeed.zero_stage must be 1, 2 or 3, got 4"),
    (["engine.name=ddp", "engine.fsdp.hsdp=true"], "engine.fsdp.hsdp=true needs engine.name=fsdp (got ddp)"),
    (["engine.fsdp.prefetch=-1"], "engine.fsdp.prefetch must be >= 0"),
    (["engine.name=deepspeed", "trainer.clip_grad_value=1.0"], "trainer.clip_grad_value is not supported by "
                                                                 "engine.name=deepspeed"),
    (["engine.name=deepspeed", "trainer.async_checkpoint=true"], "trainer.async_checkpoint is not supported by "
                                                                   "engine.name=deepspeed"),
    (["engine.name=deepspeed", "sync.mode=hierarchical"], "sync.mode=hierarchical is not supported by "
                                                            "engine.name=deepspeed"),
    (["engine.fsdp.hsdp=true", "sync.mode=hierarchical"], "sync.mode=hierarchical is not supported by "
                                                            "engine.name=fsdp with engine.fsdp.hsdp=true"),
    (["engine.name=deepspeed", "engine.deepspeed.zero_stage=3", "engine.compile=true"],
     "engine.compile=true is not supported by engine.name=deepspeed with engine.deepspeed.zero_stage=3"),
    (["sync.outer_every=0"], "sync.outer_every must be >= 1, got 0"),
    (["optim.name=lamb"], "optim.name"),
])
def test_parallelism_settings_that_do_not_fit_are_refused(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["run.dir=x", *overrides])
    assert expected in str(err.value)


def test_deepspeed_config_is_generated_and_a_user_json_wins(tmp_path):
    from aurora.engines.deepspeed import deepspeed_config_dict

    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [
        "run.dir=x", "engine.name=deepspeed", "engine.deepspeed.zero_stage=3", "engine.deepspeed.reduce_bucket_size=1000",
        "engine.deepspeed.offload_optimizer=true", "trainer.grad_accum_steps=4", "trainer.clip_grad_norm=2.0"])
    generated = deepspeed_config_dict(cfg)
    zero = generated["zero_optimization"]
    assert (zero["stage"], zero["reduce_bucket_size"], zero["offload_optimizer"]["device"]) == (3, 1000, "cpu")
    assert zero["memory_efficient_linear"] is False  # else ZeRO-3 patches F.linear for the whole process
    assert (generated["gradient_accumulation_steps"], generated["gradient_clipping"]) == (4, 2.0)
    assert "torch_autocast" not in generated  # fp32
    cfg.engine.precision = Precision.bf16  # DeepSpeed's own autocast, or on CUDA it switches aurora's off
    assert deepspeed_config_dict(cfg)["torch_autocast"] == {"enabled": True, "dtype": "bfloat16",
                                                            "lower_precision_safe_modules": []}
    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"reduce_bucket_size": 5, "stage3_max_live_parameters": 7}}')
    cfg.engine.deepspeed.config = str(user)
    merged = deepspeed_config_dict(cfg)["zero_optimization"]
    assert (merged["reduce_bucket_size"], merged["stage3_max_live_parameters"], merged["stage"]) == (5, 7, 3)
    user.write_text("{not json")
    with pytest.raises(ValueError, match=f"engine.deepspeed.config={user}: cannot read it as JSON"):
        deepspeed_config_dict(cfg)


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


def test_codec_data_and_model_sample_rates_must_agree():
    with pytest.raises((ConfigError, ValueError), match="data.sample_rate"):
        load_config(CodecTrainConfig, "configs/codec/tiny.yaml", ["data.sample_rate=24000"])


@pytest.mark.parametrize("old, new", [("engine.zero_stage", "engine.deepspeed.zero_stage"),
                                      ("engine.bucket_cap_mb", "engine.ddp.bucket_cap_mb"),
                                      ("engine.hsdp", "engine.fsdp.hsdp"),
                                      ("engine.deepspeed_config", "engine.deepspeed.config")])
def test_a_moved_key_names_its_new_place(tmp_path, old, new):
    with pytest.raises(ConfigError, match=f"'{old}' is now '{new}': pass {new}=3"):
        load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["run.dir=x", f"{old}=3"])
    yaml = tmp_path / "old.yaml"
    section, key = old.split(".")
    yaml.write_text(f"task: lm\n{section}:\n  {key}: 3\n")
    with pytest.raises(ConfigError, match=f"'{old}' in {yaml} is now '{new}': move it there"):
        load_config(LMTrainConfig, yaml, ["run.dir=x"])


def test_every_shipped_config_loads_and_dpo_configs_have_their_lm_shapes():
    """Each YAML under configs/ validates against its recipe's schema; a DPO config's model is
    the shape of the LM config it post-trains (the recipe refuses another shape at start)."""
    from dataclasses import asdict
    from pathlib import Path

    from aurora.config import peek_task
    from aurora.tasks import get_task
    from aurora.tasks.dpo import TRAINING_ONLY

    loaded = {}
    for path in sorted(Path("configs").glob("*/*.yaml")):
        loaded[path] = load_config(get_task(peek_task(path)).config_class, path, ["run.dir=x", "data.shards=x"])
    assert len(loaded) >= 12
    for path, cfg in loaded.items():
        if cfg.task != "dpo":
            continue
        lm = asdict(loaded[Path("configs/lm") / path.name].model)
        dpo = asdict(cfg.model)
        shape = [k for k in lm if k not in (*TRAINING_ONLY, "init_from")]  # init_from: where each starts
        assert {k: dpo[k] for k in shape} == {k: lm[k] for k in shape}, path


@pytest.mark.parametrize("override, allowed", [
    ("trainer.checkpoint_every=0", ">= 1"),  # each was a ZeroDivisionError after step 1
    ("trainer.log_every=0", ">= 1"),
    ("trainer.grad_accum_steps=0", ">= 1"),
    ("trainer.grad_accum_steps=-2", ">= 1"),
    ("trainer.max_steps=-1", ">= 0"),
    ("trainer.keep_last_n=0", ">= 1"),
    ("trainer.max_bad_steps=0", ">= 1"),
    ("trainer.hang_timeout_s=0", "> 0"),
    ("trainer.hang_timeout_s=-5", "> 0"),
    ("optim.lr=nan", ">= 0"),
    ("optim.lr=-0.001", ">= 0"),
    ("optim.lr=inf", ">= 0"),
    ("optim.gamma=1.5", "in (0, 1]"),
    ("data.batch_size=1000000000000", "in [1, 65536]"),
    ("data.context_frames=1000000000", "in [1, 1048576]"),  # 256 GB in collate
])
def test_values_that_cannot_work_are_refused_naming_the_field_and_its_range(override, allowed):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["run.dir=x", override])
    assert str(err.value).startswith(f"config: {key} must be {allowed}, got ")
    assert "\n" not in str(err.value)


def test_a_range_names_the_section_it_was_found_in():
    """OptimConfig is also the discriminator's (gan.optim): the message names that one."""
    with pytest.raises(ConfigError, match=r"^config: gan.optim.lr must be >= 0, got -2.0"):
        load_config(CodecTrainConfig, "configs/codec/tiny.yaml", ["run.dir=x", "gan.optim.lr=-2"])


def test_interpolations_are_resolved_for_the_run_and_saved_unresolved(tmp_path, monkeypatch):
    """A secret read from the environment is used, never written into RUN/config.yaml or wandb's config."""
    from omegaconf import OmegaConf

    from aurora.config.load import saved_config

    monkeypatch.setenv("AURORA_TEST_TOKEN", "s3cr3t")
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [
        f"run.dir={tmp_path}", "logging.wandb_project=${oc.env:AURORA_TEST_TOKEN}",
        "data.shards=https://host/${oc.env:AURORA_TEST_TOKEN}/shard-{0..3}.tar", "generation.prompts=[a,'${run.dir}']"])
    assert cfg.logging.wandb_project == "s3cr3t" and cfg.data.shards == "https://host/s3cr3t/shard-{0..3}.tar"
    assert cfg.generation.prompts == ["a", str(tmp_path)]
    saved = to_yaml(cfg)
    assert "s3cr3t" not in saved and "s3cr3t" not in str(OmegaConf.to_container(saved_config(cfg)))
    assert "wandb_project: ${oc.env:AURORA_TEST_TOKEN}" in saved and "- ${run.dir}" in saved
    (tmp_path / "config.yaml").write_text(saved)
    again = load_config(LMTrainConfig, tmp_path / "config.yaml")  # a reader of the run resolves them again
    assert (again.logging.wandb_project, again.data.shards, again.generation.prompts) == (
        cfg.logging.wandb_project, cfg.data.shards, cfg.generation.prompts)
