"""tools.inspect_shards: clean shard sets pass with the right statistics; each kind of damage
(made on a copy of the fixture shards) is reported with its shard and key; plots are PNGs."""

import io
import itertools
import json
import shutil
import tarfile

import numpy as np
import pytest

from aurora.data import DataConfig, build_loader
from tools.inspect_shards import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def inspect_report(tmp_path, capsys, shards, *extra) -> tuple[int, str, dict]:
    report_path = tmp_path / "report.json"
    code = main([str(shards), "--json", str(report_path), *map(str, extra)])
    return code, capsys.readouterr().out, json.loads(report_path.read_text())


def copy_set(shards, tmp_path):
    return shutil.copytree(shards, tmp_path / "shards")


def member_names(tar_path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()


def rewrite_member(tar_path, name: str, data: bytes) -> None:
    """Rebuild the tar with member ``name`` replaced by ``data`` (members keep their order)."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, content in members:
            content = data if member.name == name else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))


def read_member(tar_path, name: str) -> bytes:
    with tarfile.open(tar_path) as tar:
        return tar.extractfile(name).read()


def edit_manifest(shards, edit) -> None:
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def problems_of(report, kind) -> list[dict]:
    assert kind in report["problems"], f"no {kind} in {report['problem_counts']}"
    return report["problems"][kind]


# -- clean sets ------------------------------------------------------------------------------------
def test_clean_audio_shards_pass_with_the_manifest_totals(audio_shards, tmp_path, capsys):
    code, out, report = inspect_report(tmp_path, capsys, audio_shards)
    manifest = json.loads((audio_shards / "manifest.json").read_text())
    captions = [json.loads(line)["text"]
                for line in (audio_shards.parent / "corpus" / "metadata.jsonl").read_text().splitlines()]
    assert code == 0 and report["clean"] and report["problem_counts"] == {}
    assert report["num_shards"] == 3
    assert report["samples"] == report["usable_samples"] == manifest["num_samples"] == 24
    assert report["hours"] == pytest.approx(manifest["hours"], abs=1e-6)
    assert report["sample_rates"] == {"16000": 24} and report["channels"] == {"1": 24}
    assert sum(b["count"] for b in report["duration_histogram"]) == 24
    assert 0.6 <= report["seconds"]["min"] <= report["seconds"]["max"] <= 1.2
    lengths = [len(text) for text in captions]
    assert report["text_chars"] == pytest.approx({"min": min(lengths), "mean": sum(lengths) / len(lengths),
                                                  "max": max(lengths), "empty": 0})
    assert "duration histogram" in out and "#" in out and "problems: none" in out
    assert "16000 Hz (24)" in out


def test_workers_and_brace_patterns_agree(audio_shards, tmp_path, capsys):
    _, _, serial = inspect_report(tmp_path, capsys, audio_shards)
    code, _, parallel = inspect_report(tmp_path, capsys, audio_shards, "--workers", "2")
    assert code == 0 and parallel == serial
    code, _, part = inspect_report(tmp_path, capsys, f"{audio_shards}/shard-{{000000..000001}}.tar")
    assert code == 0 and part["samples"] == part["manifest"]["num_samples"] == 16 and part["num_shards"] == 2


def test_token_shards_pass(token_shards, tmp_path, capsys):
    code, out, report = inspect_report(tmp_path, capsys, token_shards)
    manifest = json.loads((token_shards / "manifest.json").read_text())
    assert code == 0 and report["clean"], out
    assert report["kind"] == "tokens" and report["samples"] == manifest["num_samples"] == 32
    assert report["hours"] == pytest.approx(manifest["hours"])
    assert report["frame_rates"] == {"50": 32} and report["codebooks"] == {"4": 32}
    assert "token shards" in out


def test_token_codes_of_the_wrong_dtype_are_reported(token_shards, tmp_path, capsys):
    shards = copy_set(token_shards, tmp_path)
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 40), dtype=np.float32))
    rewrite_member(shards / "shard-000002.tar", "clip00017.codes.npy", buffer.getvalue())
    code, out, report = inspect_report(tmp_path, capsys, shards)
    assert code == 1
    [problem] = problems_of(report, "decode_error")
    assert (problem["shard"], problem["key"]) == ("shard-000002.tar", "clip00017")
    assert "float32" in problem["detail"] and "shard-000002.tar clip00017" in out


def test_a_token_frame_rate_the_loader_does_not_read_is_a_metadata_problem_not_a_skip(token_shards, tmp_path,
                                                                                         capsys):
    shards = copy_set(token_shards, tmp_path)
    edit_manifest(shards, lambda m: m.pop("frame_rate"))
    tar = shards / "shard-000001.tar"
    bad_rate, no_rate = member_names(tar)[1], member_names(tar)[3]
    for name, edit in ((bad_rate, {"frame_rate": "fast"}), (no_rate, {})):
        meta = {k: v for k, v in json.loads(read_member(tar, name)).items() if k != "frame_rate"}
        rewrite_member(tar, name, json.dumps({**meta, **edit}).encode())
    code, _, report = inspect_report(tmp_path, capsys, shards)
    assert code == 1 and list(report["problem_counts"]) == ["metadata_mismatch"]
    assert [p["key"] for p in problems_of(report, "metadata_mismatch")] == [
        bad_rate.removesuffix(".json"), no_rate.removesuffix(".json")]
    assert report["usable_samples"] == report["samples"] == 32
    assert report["frame_rates"] == {"50": 30}  # the two without a usable rate are not measured
    loader = build_loader(DataConfig(shards=str(shards), batch_size=8, num_workers=0, shuffle_buffer=0,
                                     context_frames=40), "tokens", rank=0, world_size=1, seed=0)
    batches = list(itertools.islice(loader, 4))  # one epoch
    assert sorted(k for b in batches for k in b["keys"]) == sorted(f"clip{i:05d}" for i in range(32))
    assert all(b["skipped"] == {} for b in batches)


# -- damaged audio sets --------------------------------------------------------------------------
def truncate_mid_member(shards) -> tuple[str, str | None]:
    tar = shards / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    return "shard-000001.tar", None


def truncate_at_member_boundary(shards) -> tuple[str, str | None]:
    tar = shards / "shard-000001.tar"
    with tarfile.open(tar) as t:
        fourth_sample = t.getmembers()[6]
    tar.write_bytes(tar.read_bytes()[: fourth_sample.offset])
    return "shard-000001.tar", None


def garbage_flac(shards) -> tuple[str, str | None]:
    tar = shards / "shard-000002.tar"
    name = member_names(tar)[4]
    rewrite_member(tar, name, b"fLaC" + bytes(range(256)) * 8)
    return "shard-000002.tar", name.removesuffix(".flac")


def malformed_json(shards) -> tuple[str, str | None]:
    tar = shards / "shard-000000.tar"
    name = member_names(tar)[3]
    rewrite_member(tar, name, b'{"text": "a tone", "duration": ')
    return "shard-000000.tar", name.removesuffix(".json")


def wrong_duration(shards) -> tuple[str, str | None]:
    tar = shards / "shard-000002.tar"
    name = member_names(tar)[-1]
    meta = json.loads(read_member(tar, name))
    meta["duration"] += 0.05
    rewrite_member(tar, name, json.dumps(meta).encode())
    return "shard-000002.tar", name.removesuffix(".json")


def wrong_manifest_count(shards) -> tuple[str, str | None]:
    edit_manifest(shards, lambda m: m["shards"][1].update(samples=9))
    return "shard-000001.tar", None


def duplicated_shard(shards) -> tuple[str, str | None]:
    shutil.copy(shards / "shard-000000.tar", shards / "shard-000003.tar")
    edit_manifest(shards, lambda m: m["shards"].append({**m["shards"][0], "name": "shard-000003.tar"}))
    return "shard-000000.tar", member_names(shards / "shard-000000.tar")[0].removesuffix(".flac")


def missing_shard(shards) -> tuple[str, str | None]:
    (shards / "shard-000002.tar").unlink()
    return "shard-000002.tar", None


@pytest.mark.parametrize("damage, kind, detail", [
    (truncate_mid_member, "read_error", "truncated tar"),
    (truncate_at_member_boundary, "read_error", "end-of-archive"),
    (garbage_flac, "decode_error", ".flac"),
    (malformed_json, "bad_json", ".json"),
    (wrong_duration, "duration_mismatch", "json duration"),
    (wrong_manifest_count, "count_mismatch", "manifest.json lists 9"),
    (duplicated_shard, "duplicate_key", "shard-000003.tar"),
    (missing_shard, "missing_shard", "not found"),
])
def test_damage_is_reported_with_its_shard_and_key(audio_shards, tmp_path, capsys, damage, kind, detail):
    shards = copy_set(audio_shards, tmp_path)
    shard, key = damage(shards)
    code, out, report = inspect_report(tmp_path, capsys, shards)
    assert code == 1 and not report["clean"]
    assert list(report["problem_counts"]) == [kind], report["problems"]
    [problem] = problems_of(report, kind)[:1]
    assert (problem["shard"], problem["key"]) == (shard, key)
    assert detail in problem["detail"]
    assert f"{kind} (" in out and f"{shard}{' ' + key if key else ''}: " in out


def test_a_bad_json_member_is_named_in_the_printed_report(audio_shards, tmp_path, capsys):
    shards = copy_set(audio_shards, tmp_path)
    tar = shards / "shard-000000.tar"
    rewrite_member(tar, member_names(tar)[1], json.dumps({"text": 42}).encode())
    code = main([str(shards)])
    out = capsys.readouterr().out
    assert code == 1
    assert "bad_json (1)" in out and "'text' is 42, not a string" in out


# -- plots -------------------------------------------------------------------------------------------
def test_plot_writes_a_png(audio_shards, tmp_path, capsys):
    import matplotlib.image

    key = member_names(audio_shards / "shard-000001.tar")[0].removesuffix(".flac")
    for selector in (["--plot", key], ["--plot-index", "8"]):
        png = tmp_path / f"{selector[0]}.png"
        assert main([str(audio_shards), *selector, "--png", str(png)]) == 0
        assert str(png) in capsys.readouterr().out
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000
        height, width, _ = matplotlib.image.imread(png).shape
        assert height >= 400 and width >= 800
    assert (tmp_path / "--plot.png").read_bytes() == (tmp_path / "--plot-index.png").read_bytes()


def test_plot_of_an_unknown_key_is_a_bad_argument(audio_shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(audio_shards), "--plot", "no_such_key", "--png", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert "no sample with key 'no_such_key'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# -- bad arguments -----------------------------------------------------------------------------------
def test_a_missing_path_exits_2_saying_what_to_give(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "nowhere" in err and "does not exist" in err
    assert "manifest.json" in err and "brace pattern" in err


def test_a_directory_without_manifest_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no manifest.json" in capsys.readouterr().err
