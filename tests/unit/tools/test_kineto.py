"""tools.kineto on a trace written by hand, whose self times and exposed communication are
counted by hand: a synchronous all-reduce the main thread waits in (exposed), an asynchronous
reduce-scatter under a matmul (hidden), and GPU kernels on two streams."""

import gzip
import json

import pytest

from tools.kineto import summarize


def _event(name, cat, tid, ts, dur):
    return {"ph": "X", "name": name, "cat": cat, "pid": 1, "tid": tid, "ts": ts, "dur": dur}


def test_self_time_and_exposed_communication(tmp_path):
    events = [
        _event("aurora/step", "user_annotation", 1, 0, 40),
        _event("aten::mm", "cpu_op", 1, 0, 10),
        _event("aten::add", "cpu_op", 1, 2, 2),  # inside the matmul: 2 of its 10 µs are not its own
        _event("gloo:reduce_scatter", "user_annotation", 2, 5, 4),  # async, under the matmul: hidden
        _event("c10d::allreduce_", "cpu_op", 1, 10, 10),  # the main thread waits in it ...
        _event("aten::empty", "cpu_op", 1, 11, 1),  # ... (an op inside a collective is the collective's)
        _event("gloo:all_reduce", "user_annotation", 3, 12, 6),  # ... while gloo's thread runs it: exposed
        _event("gemm_kernel", "kernel", 7, 20, 10),  # stream 7 computes 20-30
        _event("ncclDevKernel_AllReduce", "kernel", 8, 25, 10),  # stream 8: 25-30 hidden, 30-35 exposed
    ]
    path = tmp_path / "rank0_steps1-1.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    summary = summarize(path, top=5)
    assert (summary.steps, summary.step_s) == (1, pytest.approx(40e-6))
    assert [(kind, name, calls, round(s * 1e6, 6)) for kind, name, calls, s in summary.top] == [
        ("kernel", "gemm_kernel", 1, 10), ("kernel", "ncclDevKernel_AllReduce", 1, 10),
        ("cpu_op", "c10d::allreduce_", 1, 9), ("cpu_op", "aten::mm", 1, 8), ("cpu_op", "aten::add", 1, 2)]
    # communication: 5-9, 10-20 and 25-35 (union) = 24 µs; compute: 0-10 and 20-30; exposed 10-20 and 30-35
    assert summary.comm_s == pytest.approx(24e-6) and summary.exposed_comm_s == pytest.approx(15e-6)
