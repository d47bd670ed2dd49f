"""The audio LM as a transformers folder (``aurora.release.hf``), against transformers itself:
the remote code's logits and sampled codes equal aurora's, the stock ``Qwen2Model`` loads the
backbone (only the audio extras unused) and computes aurora's hidden states, and the weights
shard above ``--max-shard-size``."""

import json
from pathlib import Path

import pytest
import torch

from aurora.generation import LM
from aurora.models.audio_lm import AudioLM, AudioLMConfig, encode_text
from aurora.models.transformer import TransformerConfig
from aurora.release.export import ExportOptions
from aurora.release.hf import write_hf
from aurora.release.source import RunModel
from aurora.tasks.lm import LMTrainConfig

transformers = pytest.importorskip("transformers")


def tiny_lm(tie: bool) -> AudioLM:
    config = AudioLMConfig(n_q=3, codebook_size=32, max_text_len=16,
                           backbone=TransformerConfig(vocab_size=300, tie_word_embeddings=tie))
    lm = AudioLM(config).eval()
    with torch.no_grad():  # random norms and biases, so a misplaced one cannot hide behind ones and zeros
        for name, p in lm.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p) + (1 if "norm" in name else 0))
    return lm


def export_hf(lm: AudioLM, out: Path, max_shard_size: str = "5GB") -> Path:
    """``write_hf`` of ``lm`` as the checkpoint of a run that is not there (no codec beside it)."""
    out.mkdir()
    source = RunModel(out / "run", out / "run" / "checkpoints" / "step_00000001", "lm", LMTrainConfig(), LM,
                      lm.config, lm)
    write_hf(source, out, ExportOptions(max_shard_size=max_shard_size))
    return out


@pytest.mark.parametrize("tie", [True, False])
def test_remote_code_gives_aurora_logits_and_codes_and_qwen2_loads_the_backbone(tmp_path, tie):
    lm = tiny_lm(tie)
    out = export_hf(lm, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is tie
    remote = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    assert type(remote).__name__ == "AuroraAudioLM"
    text, codes = encode_text(["a low tone", ""], 16), torch.randint(0, 32, (2, 3, 7))
    with torch.no_grad():
        torch.testing.assert_close(remote(text, codes), lm(text, codes), rtol=1e-5, atol=1e-5)
    # Sampling through transformers' own KV cache draws aurora's codes from the same generator.
    theirs = remote.generate_codes(["a tone"], 5, top_k=8, generator=torch.Generator().manual_seed(3))
    ours = lm.generate(encode_text(["a tone"], 16), 5, top_k=8, generators=[torch.Generator().manual_seed(3)])
    assert torch.equal(theirs, ours)

    backbone, info = transformers.Qwen2Model.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert sorted(info["unexpected_keys"]) == sorted(k for k in lm.state_dict() if not k.startswith("backbone."))
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(input_ids=ids).last_hidden_state, lm.backbone(ids),
                                   rtol=1e-5, atol=1e-5)
    assert not any(k.startswith("lm_head") for k in _weight_names(out))  # none written, tied or not


def _weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for path in folder.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            names += list(f.keys())
    return names


def test_weights_shard_above_max_shard_size_with_an_index(tmp_path):
    lm = tiny_lm(True)
    out = export_hf(lm, tmp_path / "hf", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert all(p.stat().st_size <= 100_000 or len(_weight_names_of(p)) == 1 for p in shards)
    assert sorted(index["weight_map"]) == sorted(_weight_names(out))
    remote = transformers.AutoModel.from_pretrained(out, trust_remote_code=True)
    theirs = remote.state_dict()
    for name, tensor in lm.state_dict().items():
        assert torch.equal(theirs[name.replace("backbone.", "model.", 1)], tensor), name


def _weight_names_of(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return list(f.keys())


def test_every_file_is_safetensors_json_or_the_cards_and_code(tmp_path):
    out = export_hf(tiny_lm(True), tmp_path / "hf")
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes == {".safetensors", ".json", ".py", ".md"}
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert generation.bos_token_id == 257 and generation.top_k == 50
    assert "## Codec" in (out / "README.md").read_text()
