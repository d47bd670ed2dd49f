"""The rank's error file as torchrun's agent reads it (``ProcessFailure``), whole or absent."""

import json

import pytest
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler, ProcessFailure

from aurora.distributed.error_file import AtomicErrorHandler


class KilledMidWrite(BaseException):
    """Stands for the SIGTERM that ends a rank while it writes its error file."""


def _dump_half_then_die(obj, fp):
    text = json.dumps(obj)
    fp.write(text[: len(text) // 2])
    fp.flush()
    raise KilledMidWrite


def _record(handler: ErrorHandler) -> None:
    try:
        raise RuntimeError("Connection closed by peer")
    except RuntimeError as e:
        handler.record_exception(e)


def _agent_reads(path) -> ProcessFailure:
    return ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(path))


def test_the_agent_reads_the_same_report_as_from_torchs_handler(tmp_path, monkeypatch):
    reports = {}
    for handler in (ErrorHandler(), AtomicErrorHandler()):
        path = tmp_path / f"{type(handler).__name__}.json"
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
        _record(handler)
        reports[type(handler)] = _agent_reads(path)
    torchs, ours = reports[ErrorHandler], reports[AtomicErrorHandler]
    assert ours.message["message"] == torchs.message["message"] == "RuntimeError: Connection closed by peer"
    assert ours.message["extraInfo"]["py_callstack"] == torchs.message["extraInfo"]["py_callstack"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AtomicErrorHandler.json", "ErrorHandler.json"]


def test_a_rank_killed_while_writing_leaves_no_file_the_agent_cannot_parse(tmp_path, monkeypatch):
    monkeypatch.setattr(json, "dump", _dump_half_then_die)
    torchs, ours = tmp_path / "torch.json", tmp_path / "aurora.json"

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(torchs))
    with pytest.raises(KilledMidWrite):
        _record(ErrorHandler())
    with pytest.raises(json.JSONDecodeError):  # what took the surviving agent down
        _agent_reads(torchs)

    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(ours))
    with pytest.raises(KilledMidWrite):
        _record(AtomicErrorHandler())
    assert not ours.exists()
    failure = _agent_reads(ours)  # no file: the agent reports the exit code and restarts the group
    assert failure.exitcode == 1 and failure.error_file == "<N/A>"
