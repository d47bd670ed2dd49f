"""A tokenize job killed mid-shard (SIGKILL, as an out-of-memory kill or a lost node does it)
resumes by the same command and gives byte-identical shards and a complete manifest."""

from data_prep import tokenize
from aurora.data.manifest import read_manifest
from tests.helpers.runs import run_cmd
from tests.helpers.tokens import BATCH, tar_bytes


def test_interrupted_run_resumes(audio_shards, codec_dir, tokens, tmp_path, capsys):
    out = tmp_path / "tokens"
    args = ["--shards", str(audio_shards), "--codec", str(codec_dir), "--out", str(out), *BATCH]
    killed = run_cmd(["-m", "data_prep.tokenize", *args], env={tokenize.FAULT_KILL_ENV: "1"}, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (out / "shard-000000.tar").is_file() and (out / "shard-000000.tar.done.json").is_file()
    assert (out / "shard-000001.tar.tmp").stat().st_size > 0 and not (out / "shard-000001.tar").exists()
    assert not (out / "shard-000002.tar").exists() and not (out / "manifest.json").exists()
    first = (out / "shard-000000.tar").stat().st_mtime_ns

    tokenize.main(args)
    assert "this run: 2 shards encoded, 1 already done" in capsys.readouterr().out
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first  # kept, not redone
    assert not list(out.glob("*.tmp"))
    assert tar_bytes(out) == tar_bytes(tokens)
    assert read_manifest(out)["shards"] == read_manifest(tokens)["shards"]

    # A token shard that no longer matches its record (cut short) is redone; nothing else is.
    (out / "shard-000002.tar").write_bytes((out / "shard-000002.tar").read_bytes()[:1024])
    tokenize.main(args)
    assert "this run: 1 shards encoded, 2 already done" in capsys.readouterr().out
    assert tar_bytes(out) == tar_bytes(tokens)
    manifest = read_manifest(out)
    assert manifest["num_samples"] == 24 and manifest["stats"]["shards_done_before"] == 2
