"""data_prep.tokenize on 2 ranks gives the token shards of 1: each rank encodes its own shards,
and rank 0 writes the manifest with both ranks' statistics."""

from aurora.data.manifest import read_manifest
from tests.helpers.runs import run_main
from tests.helpers.tokens import BATCH, tar_bytes


def test_two_ranks_give_the_same_tokens_as_one(audio_shards, codec_dir, tokens, tmp_path, pool2):
    out = tmp_path / "tokens"
    results = pool2.run(run_main, "data_prep.tokenize", "--shards", str(audio_shards), "--codec", str(codec_dir),
                        "--out", str(out), *BATCH)
    assert [r.value for r in results] == [0, 0]
    assert tar_bytes(out) == tar_bytes(tokens)
    manifest = read_manifest(out)
    assert manifest["shards"] == read_manifest(tokens)["shards"]
    assert [r["rank"] for r in manifest["stats"]["ranks"]] == [0, 1]
    assert sorted(r["shards"] for r in manifest["stats"]["ranks"]) == [1, 2]
    assert "rank 1:" in results[0].output and "total (2 ranks):" in results[0].output
