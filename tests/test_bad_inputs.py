"""Bad input gets one clear line naming what is wrong; a bad sample is skipped and counted."""

import io
import shutil
import tarfile

from tests.conftest import read_metrics, run_cmd


def _train(*overrides, nproc=0, check=False):
    return run_cmd(["-m", "aurora", "train", *overrides], nproc=nproc, check=check)


def test_missing_shard_path(tmp_path):
    result = _train("configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", f"data.shards={tmp_path}/nowhere")
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_brace_pattern_matching_nothing(tmp_path, token_shards):
    result = _train("configs/lm/tiny.yaml", f"run.dir={tmp_path}/run",
                    f"data.shards={token_shards}/shard-{{000100..000101}}.tar")
    assert result.returncode == 2
    assert "matches no file" in result.stderr


def test_unknown_key(tmp_path, token_shards):
    result = _train("configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", f"data.shards={token_shards}",
                    "trainer.max_stepz=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown key 'trainer.max_stepz'" in lines[0] and "max_steps" in lines[0]


def test_wrong_type_and_bad_choice(tmp_path, token_shards):
    result = _train("configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", "trainer.max_steps=many")
    assert result.returncode == 2
    assert "trainer.max_steps" in result.stderr and "many" in result.stderr
    result = _train("configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", "engine.name=horovod")
    assert result.returncode == 2
    assert "engine.name" in result.stderr and "ddp" in result.stderr and "fsdp" in result.stderr


def test_codebook_mismatch_with_token_shards(tmp_path, token_shards):
    result = _train("configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", f"data.shards={token_shards}",
                    "model.n_q=8")
    assert result.returncode == 2
    assert "model.n_q=8" in result.stderr and "n_q=4" in result.stderr


def _corrupt_first_flac(src, dst):
    """Copy shard ``src`` to ``dst`` with the first .flac member's bytes garbled."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        garbled = False
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name.endswith(".flac") and not garbled:
                data = b"not a flac at all" + data[64:]
                garbled = True
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def test_corrupt_flac_member_is_skipped_and_counted(tmp_path, audio_shards):
    shards = tmp_path / "shards"
    shutil.copytree(audio_shards, shards)
    _corrupt_first_flac(audio_shards / "shard-000000.tar", shards / "shard-000000.tar")
    run = tmp_path / "codec"
    result = _train("configs/codec/tiny.yaml", f"run.dir={run}", f"data.shards={shards}", "trainer.max_steps=6",
                    "trainer.log_every=1", "trainer.progress_bar=false", "data.batch_size=4",
                    "data.segment_seconds=0.2", nproc=2, check=True)
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 7))
    # Counted each time the bad member is met: 6 steps go over that shard more than once.
    assert metrics[-1]["data/skipped/decode_error"] >= 1
    assert all(m["loss"] == m["loss"] for m in metrics)
    assert "shard-000000.tar" in result.stderr
