"""``aurora export`` of real training runs, in this one process: the weights it writes are the
checkpoint's, aurora and transformers load them, and every bad request is one clear line."""

import json
import shutil

import torch

from aurora.exported import load_model
from aurora.generation import LM
from aurora.models.audio_lm import encode_text
from aurora.runs import rank_file
from aurora.tasks.codec import load_codec
from tests.helpers.runs import cli, weights


def _export(run, out, *extra: str) -> int:
    return cli("export", str(run), "--out", str(out), "--trust-checkpoint", *extra)


def test_safetensors_export_of_an_lm_run_loads_with_its_codec_and_samples(tmp_path, lm_run):
    out = tmp_path / "lm"
    assert _export(lm_run, out, "--format", "safetensors") == 0
    assert sorted(p.name for p in out.iterdir()) == ["codec", "config.json", "export.json", "model.safetensors",
                                                      "training_config.json"]
    assert {p.suffix for p in out.rglob("*") if p.is_file()} == {".safetensors", ".json"}
    exported = load_model(out, LM, trust=False, what="export").model
    trained = weights(lm_run)
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in trained.items())
    assert load_codec(out / "codec").codec.cfg.n_q == exported.config.n_q
    assert json.loads((out / "export.json").read_text())["step"] == 2
    assert json.loads((out / "training_config.json").read_text())["task"] == "lm"
    assert cli("generate", str(out), "--caption", "a tone", "--out", str(tmp_path / "samples"),
               "--max-seconds", "0.2") == 0
    # bf16: each tensor cast once, the index shards it.
    assert _export(lm_run, tmp_path / "bf16", "--format", "safetensors", "--dtype", "bf16",
                   "--max-shard-size", "200KB") == 0
    half = load_model(tmp_path / "bf16", LM, trust=False, what="export").model
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    assert all(torch.equal(half.state_dict()[k], v.bfloat16().float()) for k, v in trained.items())


def test_hf_export_of_an_lm_run_gives_its_logits_in_transformers(tmp_path, lm_run):
    import transformers

    out = tmp_path / "hf"
    assert _export(lm_run, out, "--format", "hf") == 0
    lm = load_model(lm_run, LM, trust=True, what="run").model
    remote = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    text, codes = encode_text(["a low tone"], lm.config.max_text_len), torch.randint(0, 64, (1, 4, 6))
    with torch.no_grad():
        torch.testing.assert_close(remote(text, codes), lm(text, codes), rtol=1e-5, atol=1e-5)
    card = (out / "README.md").read_text()
    codec = json.loads((out / "config.json").read_text())["codec"]
    assert codec["n_q"] == 4 and codec["codebook_size"] == 64 and codec["id"] in card
    assert (out / "codec" / "model.safetensors").is_file()


def test_bad_exports_are_refused_with_what_to_do(tmp_path, lm_run, codec_run, capfd):
    out = tmp_path / "out"
    assert _export(lm_run, out, "--format", "safetensors", "--step", "7") == 2
    assert "has no checkpoint of step 7; its complete checkpoints are of steps 2" in capfd.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(lm_run, broken)
    rank_file(broken / "checkpoints" / "step_00000002", 0, 1).unlink()
    assert _export(broken, out, "--format", "safetensors", "--step", "2") == 2
    assert "step_00000002 is incomplete (missing every rank's rank_R_of_N.pt)" in capfd.readouterr().err
    assert _export(codec_run, out, "--format", "hf") == 2
    err = capfd.readouterr().err
    assert "--format hf holds audio_lm models" in err and "formats for it: safetensors" in err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export(lm_run, out, "--format", "safetensors") == 2
    assert "is not empty: give a new or empty folder, or pass --force" in capfd.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "out.tmp").exists()
    assert _export(lm_run, out, "--format", "safetensors", "--force") == 0
    assert not (out / "keep.txt").exists()
    assert cli("export", str(lm_run), "--format", "safetensors", "--out", str(tmp_path / "o2")) == 2
    assert "pass --trust-checkpoint" in capfd.readouterr().err and not (tmp_path / "o2").exists()
