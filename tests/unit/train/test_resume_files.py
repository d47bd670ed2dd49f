"""What a resume reads besides DCP's files: the metrics log it truncates."""

import json

import pytest

from aurora.train import loop


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
