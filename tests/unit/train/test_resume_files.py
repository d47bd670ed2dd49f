"""What a resume reads besides DCP's tensors: the metrics log it truncates, and the rank files,
read weights-only."""

import json
import random
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from aurora.runs import SHARED_FILE, rank_file
from aurora.train import loop
from aurora.train.checkpoint import Checkpointer
from aurora.train.nonfatal import NonFatal
from aurora.train.rng import rng_state, set_rng_state


def test_a_torn_last_line_of_the_metrics_log_is_dropped_not_fatal(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    log.write_bytes(("\n".join(lines) + "\n").encode() + b'{"step": 4, "loss": "\xc3')  # kill -9 mid-write
    loop._truncate_log(log, 2)
    assert log.read_text().splitlines() == lines[:2]
    assert "dropped 1 unreadable line(s)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [log]


def test_the_metrics_log_is_replaced_whole(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    before = log.read_bytes()

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(loop.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        loop._truncate_log(log, 1)
    assert log.read_bytes() == before


class _Touch:
    """Unpickled, it creates ``marker``: stands for any code a crafted pickle runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _dcp_checkpoint(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"w": torch.zeros(2)}, checkpoint_id=path, no_dist=True)
    return path


def test_rank_files_load_weights_only_so_a_crafted_one_runs_nothing(tmp_path):
    path = _dcp_checkpoint(tmp_path / "checkpoints" / "step_00000002")
    marker = tmp_path / "ran"
    torch.save({"rng": _Touch(marker)}, rank_file(path, 0, 1))
    torch.save({"ranks": []}, path / SHARED_FILE)
    checkpointer = Checkpointer(tmp_path, env=SimpleNamespace(rank=0), nonfatal=NonFatal(0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        with pytest.raises(RuntimeError, match="holds more than tensors and plain values.*resume from another"):
            checkpointer.load(path, {"w": torch.ones(2)})
    assert not marker.exists()


def test_the_rng_state_of_a_rank_file_round_trips_weights_only(tmp_path):
    np.random.seed(5)
    np.random.normal()  # a cached Gaussian is part of numpy's state
    random.seed(6)
    torch.manual_seed(7)
    torch.save({"rng": rng_state()}, tmp_path / "rank.pt")
    expected = (np.random.normal(), np.random.randint(2**30), random.random(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "rank.pt", weights_only=True)["rng"])
    assert (np.random.normal(), np.random.randint(2**30), random.random(), torch.rand(3).tolist()) == expected
