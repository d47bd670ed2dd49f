"""Preference pairs from an LM (``data_prep.make_pairs``) and their reference log-probs
(``data_prep.ref_logprobs``): 2 ranks write the bytes 1 process writes, the log-probs are the
recipe's, the pairs train, and bad requests get one clear line."""

import io
import json
import shutil

import numpy as np
import pytest
import webdataset as wds

from aurora.data import DataConfig, build_loader
from aurora.data.manifest import read_manifest
from aurora.data.pairs import SIDES, npy_bytes, ref_field
from aurora.data.tars import read_shard
from tests.helpers.pairs import reference_logps, reference_model
from tests.helpers.runs import run_main
from tests.helpers.tokens import tar_bytes

SECONDS = ["--seconds", "0.3", "--batch-size", "4"]
RANKED = ["--mode", "ranked", "--reward", "mel_distance", "--num-candidates", "3"]


def pairs_job(pool, lm_run, tokens, out, *extra: str) -> None:
    args = ["--lm", str(lm_run), "--trust-checkpoint", "--prompts", str(tokens), "--out", str(out), *SECONDS, *extra]
    assert [r.value for r in pool.run(run_main, "data_prep.make_pairs", *args)] == [0] * pool.world
    assert [r.value for r in pool.run(run_main, "data_prep.ref_logprobs", "--lm", str(lm_run), "--trust-checkpoint", "--pairs",
                                      str(out))] == [0] * pool.world


@pytest.fixture(scope="module")
def golden(tmp_path_factory, lm_run, tokens, pool1):
    out = tmp_path_factory.mktemp("golden") / "pairs"
    pairs_job(pool1, lm_run, tokens, out, "--reward", "caption_match")
    return out


def samples(shards) -> dict[str, dict]:
    out = {}
    for shard in read_manifest(shards)["shards"]:
        for sample in read_shard(str(shards / shard["name"]), lambda *a: pytest.fail(str(a))):
            out[sample["__key__"]] = {side: np.load(io.BytesIO(sample[f"{side}.npy"])) for side in SIDES}
            out[sample["__key__"]]["json"] = json.loads(sample["json"])
    return out


def test_golden_pairs_hold_the_real_codes_against_a_sample_with_the_recipes_logprobs(golden, tokens, lm_run):
    manifest = read_manifest(golden)
    assert manifest["kind"] == "pairs" and manifest["mode"] == "golden" and manifest["num_samples"] == 24
    assert manifest["policy"]["id"] == manifest["reference"]["id"]  # the LM that sampled is the reference
    assert (golden / manifest["codec"] / "model.safetensors").is_file()
    real = {}
    for shard in read_manifest(tokens)["shards"]:
        for sample in read_shard(str(tokens / shard["name"]), lambda *a: pytest.fail(str(a))):
            real[sample["__key__"]] = np.load(io.BytesIO(sample["codes.npy"]))
    pairs = samples(golden)
    assert manifest["text_bytes_max"] == max(len(p["json"]["text"].encode()) for p in pairs.values())
    model = reference_model(lm_run)
    for key, pair in pairs.items():
        meta = pair["json"]
        assert np.array_equal(pair["chosen"], real[key][:, :15])  # 0.3 s at 50 Hz
        assert pair["rejected"].shape == (4, 15) and meta["rejected_frames"] == 15
        assert set(meta["rewards"]) == {"name", "chosen", "rejected"}
    # The reference log-probs, batched and padded, are those of each side alone (the recipe's sum).
    for key in list(pairs)[:3]:
        alone = reference_logps(model, pairs[key]["json"]["text"], {s: pairs[key][s] for s in SIDES})
        for side in SIDES:
            assert pairs[key]["json"][ref_field(side)] == pytest.approx(alone[ref_field(side)], rel=1e-5)
    cfg = DataConfig(shards=str(golden), batch_size=4, num_workers=0, context_frames=24)
    batch = next(iter(build_loader(cfg, "pairs", 0, 1, seed=0)))
    assert batch["codes"].shape == (8, 4, 24) and batch["ref_logps"].shape == (8,)


def test_two_ranks_write_the_bytes_one_process_writes(tmp_path, lm_run, tokens, pool1, pool2):
    """Ranked pairs by mel distance, on 1 process and on 2 ranks, then their reference log-probs."""
    pairs_job(pool1, lm_run, tokens, tmp_path / "one", *RANKED)
    pairs_job(pool2, lm_run, tokens, tmp_path / "two", *RANKED)
    assert tar_bytes(tmp_path / "one") == tar_bytes(tmp_path / "two")
    manifest = read_manifest(tmp_path / "one")
    assert manifest["mode"] == "ranked" and manifest["reward"] == "mel_distance" and manifest["num_samples"] > 0
    for pair in samples(tmp_path / "one").values():
        rewards = pair["json"]["rewards"]
        assert rewards["chosen"] == max(rewards["all"]) > rewards["rejected"] == min(rewards["all"])
        assert len(pair["json"]["seeds"]) == 3


def test_low_margins_and_identical_sides_are_skipped_and_counted(tmp_path, lm_run, tokens, pool1):
    """A margin no ranking reaches skips every prompt, and so does greedy sampling, whose
    candidates are one clip that ties with itself. Golden prompts whose real codes are what the
    LM samples greedily (its own greedy samples, as token shards) make pairs with identical sides."""
    args = ["--lm", str(lm_run), "--trust-checkpoint", *SECONDS]
    ranked = [*args, "--prompts", str(tokens), *RANKED]
    assert pool1.run(run_main, "data_prep.make_pairs", *ranked, "--out", str(tmp_path / "a"), "--min-margin", "1e9")[0].value == 0
    assert read_manifest(tmp_path / "a")["skipped"] == {"low_margin": 24}
    assert pool1.run(run_main, "data_prep.make_pairs", *ranked, "--out", str(tmp_path / "b"), "--top-k", "1")[0].value == 0
    assert read_manifest(tmp_path / "b")["skipped"] == {"low_margin": 24}
    greedy = [*args, "--mode", "golden", "--top-k", "1"]
    assert pool1.run(run_main, "data_prep.make_pairs", *greedy, "--prompts", str(tokens), "--out", str(tmp_path / "c"))[0].value == 0
    own = tmp_path / "own"
    shutil.copytree(tokens, own)
    sampled = {key: pair["rejected"] for key, pair in samples(tmp_path / "c").items()}
    for shard in read_manifest(tokens)["shards"]:
        with wds.TarWriter(str(own / shard["name"])) as sink:
            for sample in read_shard(str(tokens / shard["name"]), lambda *a: pytest.fail(str(a))):
                # A prompt missing from the pairs had its real codes sampled already (identical).
                real = np.load(io.BytesIO(sample["codes.npy"]))[:, :15]
                sink.write({"__key__": sample["__key__"], "codes.npy": npy_bytes(sampled.get(sample["__key__"], real)),
                            "json": sample["json"]})
    assert pool1.run(run_main, "data_prep.make_pairs", *greedy, "--prompts", str(own), "--out", str(tmp_path / "d"))[0].value == 0
    assert read_manifest(tmp_path / "d")["skipped"] == {"identical_pair": 24}


def test_a_caption_too_long_and_a_codec_run_are_refused_before_sampling(tmp_path, lm_run, tokens, capfd):
    long = tmp_path / "long"
    long.mkdir()
    for path in tokens.iterdir():
        if path.suffix != ".tar" and path.is_file():
            (long / path.name).write_bytes(path.read_bytes())
    (long / "codec").symlink_to(tokens / "codec")
    for shard in read_manifest(tokens)["shards"]:
        with wds.TarWriter(str(long / shard["name"]), mtime=0) as sink:
            for sample in read_shard(str(tokens / shard["name"]), lambda *a: pytest.fail(str(a))):
                meta = json.loads(sample["json"])
                if sample["__key__"].endswith("000005"):
                    meta["text"] = "a caption " * 10
                sink.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"} |
                           {"json": json.dumps(meta).encode()})
    args = ["--prompts", str(long), "--out", str(tmp_path / "out"), "--trust-checkpoint", *SECONDS]
    assert make_pairs_main(["--lm", str(lm_run), *args]) == 2
    assert "is 100 bytes; this LM reads at most 78 (model.max_text_len=80): shorten it" in capfd.readouterr().err
    assert not (tmp_path / "out").exists()
    codec_run = tmp_path / "codec_run"
    codec_run.mkdir()
    (codec_run / "config.yaml").write_text("task: codec\n")
    assert make_pairs_main(["--lm", str(codec_run), *args]) == 2
    assert "is a 'codec' run, not an audio LM run" in capfd.readouterr().err
    assert run_main("data_prep.ref_logprobs", "--lm", str(codec_run), "--trust-checkpoint", "--pairs", str(tmp_path)) == 2
    assert "is a 'codec' run, not an audio LM run" in capfd.readouterr().err


def make_pairs_main(argv: list[str]) -> int:
    return run_main("data_prep.make_pairs", *argv)
