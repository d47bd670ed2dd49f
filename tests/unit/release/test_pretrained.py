"""``model.init_from`` (``aurora.release.pretrained``) against transformers itself: a random
``Qwen2ForCausalLM`` that transformers saved initialises the LM recipe's backbone (its hidden
states equal transformers'), the LM exported back as ``hf`` holds the folder's tensors bit for
bit, a run's checkpoint starts another run, and every bad folder or form is one clear line."""

import pytest
import torch
from safetensors.torch import load_file

from aurora.config import ConfigError, load_config
from aurora.distributed import DistEnv
from aurora.exported import ModelLoadError
from aurora.generation import LM
from aurora.release.export import ExportOptions
from aurora.release.hf import write_hf
from aurora.release.pretrained import parse_init_from
from aurora.release.source import RunModel
from aurora.tasks.lm import LMTask, LMTrainConfig
from data_prep.synth_tokens import write_token_shards

transformers = pytest.importorskip("transformers")

SHAPE = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}
BACKBONE = [f"model.backbone.{name}={value}" for name, value in SHAPE.items()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_token_shards(tmp_path_factory.mktemp("tokens"), num_clips=8)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A random Qwen2ForCausalLM of ``SHAPE`` (untied: its lm_head is written and must be
    skipped), saved by transformers; random norms and biases, so none can hide behind ones."""
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p) + (1 if "norm" in name else 0))
    folder = tmp_path_factory.mktemp("qwen2") / "qwen2"
    model.save_pretrained(folder)
    return folder, model


def make_task(shards, *overrides: str) -> LMTask:
    cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [f"data.shards={shards}", *overrides])
    return LMTask(cfg, DistEnv(0, 1, 0, 1, 0, 1, torch.device("cpu"), "gloo"))


def test_a_transformers_qwen2_initialises_the_backbone_and_exports_back_bit_identical(tmp_path, shards, qwen2):
    folder, theirs = qwen2
    task = make_task(shards, *BACKBONE, f"model.init_from=hf:{folder}")
    lm = task.build_model().eval()
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(lm.backbone(ids), theirs.model(input_ids=ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    fresh = make_task(shards, *BACKBONE).build_model()  # the audio extras start as without init_from
    assert lm.heads[0].weight.shape == fresh.heads[0].weight.shape
    # hf -> init_from -> aurora -> hf: every backbone tensor bit-identical to transformers' file.
    out = tmp_path / "hf"
    out.mkdir()
    write_hf(RunModel(tmp_path, tmp_path / "step_00000001", "lm", task.cfg, LM, task.cfg.model, lm), out,
             ExportOptions())
    original, exported = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
    backbone = {k: v for k, v in original.items() if k.startswith("model.")}
    assert backbone and all(torch.equal(exported[k], v) for k, v in backbone.items())
    assert "lm_head.weight" in original and "lm_head.weight" not in exported


def test_another_shape_or_architecture_is_refused_naming_the_fields(tmp_path, shards, qwen2):
    folder, _ = qwen2
    with pytest.raises(ConfigError, match=r"model.backbone.hidden_size=128 but 32; .*model.backbone."
                                          r"num_hidden_layers=4 but 2"):
        make_task(shards, f"model.init_from=hf:{folder}")  # the tiny preset's backbone
    llama = tmp_path / "llama"
    transformers.LlamaConfig(**{k: v for k, v in SHAPE.items()}).save_pretrained(llama)
    with pytest.raises(ConfigError, match="is a 'llama' model .*not a Qwen2 one: .*give a Qwen2ForCausalLM"):
        make_task(shards, *BACKBONE, f"model.init_from=hf:{llama}")
    with pytest.raises(ConfigError, match="holds no config.json"):
        make_task(shards, *BACKBONE, f"model.init_from=hf:{tmp_path}")
    for bad in ("qwen2/dir", "hf:", "run:RUN@last"):
        with pytest.raises(ConfigError, match="hf:DIR|step number"):
            parse_init_from(bad)


def test_a_run_checkpoint_starts_another_run_at_a_chosen_step(tmp_path, shards, qwen2):
    """``run:RUN@STEP`` reads that checkpoint's model (any engine's: ``aurora.runs``), only trusted."""
    from tests.helpers.runs import cli, lm_train_args, weights

    run = tmp_path / "run"
    assert cli(*lm_train_args(run, shards, 1, *BACKBONE, "trainer.checkpoint_every=1", "data.num_workers=0",
                              f"model.init_from=hf:{qwen2[0]}")) == 0
    with pytest.raises(ModelLoadError, match="run.trust_checkpoint=true"):
        make_task(shards, *BACKBONE, f"model.init_from=run:{run}@1").build_model()
    with pytest.raises(ModelLoadError, match="has no checkpoint of step 5; its complete checkpoints are of steps 1"):
        make_task(shards, *BACKBONE, f"model.init_from=run:{run}@5", "run.trust_checkpoint=true").build_model()
    started = make_task(shards, *BACKBONE, f"model.init_from=run:{run}@1", "run.trust_checkpoint=true").build_model()
    assert all(torch.equal(started.state_dict()[k], v) for k, v in weights(run).items())
