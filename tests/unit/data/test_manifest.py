import json
import tarfile

import pytest

from aurora.data.manifest import SCHEMA_VERSION, ManifestError, read_manifest, resolve_shards, write_manifest

SHARDS = [{"name": f"shard-{i:06d}.tar", "samples": 10 + i, "seconds": 36.0} for i in range(3)]


@pytest.fixture
def shard_dir(tmp_path):
    for shard in SHARDS:
        (tmp_path / shard["name"]).write_bytes(b"")
    write_manifest(tmp_path, "tokens", SHARDS, 16000, n_q=4, codebook_size=1024, frame_rate=50.0, codec="c")
    return tmp_path


def edit_manifest(directory, **changes):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_write_then_read_round_trips(shard_dir):
    manifest = read_manifest(shard_dir)
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["kind"] == "tokens" and manifest["sample_rate"] == 16000
    assert manifest["shards"] == SHARDS
    assert manifest["num_samples"] == 33
    assert manifest["hours"] == pytest.approx(3 * 36 / 3600)
    assert manifest["n_q"] == 4 and manifest["codec"] == "c"
    assert "created_by" in manifest
    assert not list(shard_dir.glob("*.tmp"))


def test_write_rejects_bad_kind_and_shard_entries(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        write_manifest(tmp_path, "video", SHARDS, 16000)
    with pytest.raises(ValueError, match="name .* samples"):
        write_manifest(tmp_path, "audio", [{"name": "a.tar", "samples": 1}], 16000)


def test_unknown_schema_version_is_a_clear_error(shard_dir):
    edit_manifest(shard_dir, schema_version=99)
    with pytest.raises(ManifestError, match=r"schema_version 99 is not supported by this aurora \(supports 1\)") as err:
        read_manifest(shard_dir)
    assert "data_prep.make_shards" in str(err.value)


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json in") as err:
        read_manifest(tmp_path)
    assert "brace pattern" in str(err.value)


def test_malformed_json_is_a_clear_error(shard_dir):
    (shard_dir / "manifest.json").write_text('{"schema_version": 1, "kind": ')
    with pytest.raises(ManifestError, match="is not valid JSON"):
        read_manifest(shard_dir)
    (shard_dir / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ManifestError, match="must hold a JSON object"):
        read_manifest(shard_dir)


def test_missing_keys_and_bad_shards_are_named(shard_dir):
    path = shard_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["hours"], manifest["shards"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"lacks required keys \['shards', 'hours'\]"):
        read_manifest(shard_dir)
    edit_manifest(shard_dir, shards=[{"name": "x.tar"}], hours=1.0)
    with pytest.raises(ManifestError, match="'shards' must be a list"):
        read_manifest(shard_dir)


def test_resolve_directory(shard_dir):
    urls, manifest = resolve_shards(str(shard_dir))
    assert urls == [str(shard_dir / s["name"]) for s in SHARDS]
    assert manifest["num_samples"] == 33


def test_resolve_directory_with_a_missing_shard(shard_dir):
    (shard_dir / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="lists 1 shard.* that do not exist.*shard-000001.tar"):
        resolve_shards(str(shard_dir))


def test_resolve_brace_pattern_returns_the_directory_manifest(shard_dir):
    urls, manifest = resolve_shards(f"{shard_dir}/shard-{{000000..000001}}.tar")
    assert urls == [str(shard_dir / "shard-000000.tar"), str(shard_dir / "shard-000001.tar")]
    assert manifest is not None and manifest["kind"] == "tokens"


def test_resolve_brace_pattern_without_manifest(tmp_path):
    (tmp_path / "a-0.tar").write_bytes(b"")
    (tmp_path / "a-1.tar").write_bytes(b"")
    urls, manifest = resolve_shards(f"{tmp_path}/a-{{0..1}}.tar")
    assert len(urls) == 2 and manifest is None


def test_brace_pattern_that_matches_nothing(shard_dir):
    spec = f"{shard_dir}/shard-{{0000..0002}}.tar"  # wrong zero padding
    with pytest.raises(FileNotFoundError, match="matches no file") as err:
        resolve_shards(spec)
    assert spec in str(err.value) and "zero padding" in str(err.value)


def test_brace_pattern_with_some_missing(shard_dir):
    with pytest.raises(FileNotFoundError, match="2 of 5 shards do not exist"):
        resolve_shards(f"{shard_dir}/shard-{{000000..000004}}.tar")


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"shard spec '.*nowhere' does not exist: give a shard directory"):
        resolve_shards(f"{tmp_path}/nowhere")


def test_missing_directory(tmp_path):
    spec = f"{tmp_path}/nowhere/shard-{{000000..000003}}.tar"
    with pytest.raises(FileNotFoundError, match=r"directory .*nowhere does not exist"):
        resolve_shards(spec)


def test_directory_without_manifest(tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no manifest.json in .*: point data.shards at a directory"):
        resolve_shards(str(tmp_path))


def test_glob_and_empty_specs_are_rejected(shard_dir):
    with pytest.raises(ValueError, match="is a glob"):
        resolve_shards(f"{shard_dir}/*.tar")
    with pytest.raises(ValueError, match="data.shards is empty"):
        resolve_shards("")


def _longest_caption(shard_dir) -> int:
    longest = 0
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as members:
            for member in members:
                if member.name.endswith(".json"):
                    longest = max(longest, len(json.loads(members.extractfile(member).read())["text"].encode()))
    return longest


def test_make_shards_and_tokenize_record_the_longest_caption(audio_shards, tokens):
    """What an LM recipe checks its ``model.max_text_len`` against before training."""
    longest = _longest_caption(audio_shards)
    assert longest > 0
    assert read_manifest(audio_shards)["text_bytes_max"] == longest
    assert read_manifest(tokens)["text_bytes_max"] == _longest_caption(tokens) == longest
