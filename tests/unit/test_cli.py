"""``aurora train`` with bad input: one clear line on stderr naming what is wrong, exit code 2,
no traceback. Run in this process, as ``aurora.cli.main``."""

import os
from types import SimpleNamespace

from tests.helpers.runs import cli


def _error(capsys, *argv) -> SimpleNamespace:
    code = cli("train", *argv)
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def test_missing_shard_path(capsys, tmp_path):
    result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", f"data.shards={tmp_path}/nowhere")
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_brace_pattern_matching_nothing(capsys, tmp_path, token_shards):
    result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}/run",
                    f"data.shards={token_shards}/shard-{{000100..000101}}.tar")
    assert result.returncode == 2
    assert "matches no file" in result.stderr


def test_unknown_key(capsys, tmp_path, token_shards):
    result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", f"data.shards={token_shards}",
                    "trainer.max_stepz=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "unknown key 'trainer.max_stepz'" in lines[0] and "max_steps" in lines[0]


def test_wrong_type_and_bad_choice(capsys, tmp_path, token_shards):
    result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", "trainer.max_steps=many")
    assert result.returncode == 2
    assert "trainer.max_steps" in result.stderr and "many" in result.stderr
    result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", "engine.name=horovod")
    assert result.returncode == 2
    assert "engine.name" in result.stderr and "ddp" in result.stderr and "fsdp" in result.stderr


def test_codebook_mismatch_with_token_shards(capsys, tmp_path, token_shards):
    result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}/run", f"data.shards={token_shards}",
                    "model.n_q=8")
    assert result.returncode == 2
    assert "model.n_q=8" in result.stderr and "n_q=4" in result.stderr


def test_a_run_dir_in_use_by_another_job(capsys, tmp_path):
    from aurora.train.run_lock import RunLock

    with RunLock(tmp_path, is_main=True):
        result = _error(capsys, "configs/lm/tiny.yaml", f"run.dir={tmp_path}", "data.shards=x")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"run.dir={tmp_path} is in use by another job (host " in line and f"pid {os.getpid()})" in line
    assert not (tmp_path / "config.yaml").exists()
