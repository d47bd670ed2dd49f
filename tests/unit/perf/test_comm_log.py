"""CollectiveLog's bookkeeping: step tags, summaries by node, which groups span nodes. What it
records from real collectives is checked on two ranks in tests/dist/test_comm_log.py."""

import pytest

from aurora.perf.comm_log import CollectiveLog, CommRecord, spans_nodes


def test_mark_step_tags_and_summary_by_step():
    log = CollectiveLog()
    log.records = [CommRecord(step=s, kind=k, op="c10d::test", bytes=b, dtype="float32", ranks=g)
                   for s, k, b, g in [(0, "all_reduce", 100, (0, 1)), (0, "all_gather", 8, (0, 2)),
                                      (1, "all_reduce", 50, (2, 3)), (1, "all_reduce", 50, (1, 2))]]
    summary = log.summary(local_world_size=2, by_step=True)
    assert summary == {
        0: {"all_reduce": {"count": 1, "bytes": 100, "intra_node_bytes": 100, "inter_node_bytes": 0},
            "all_gather": {"count": 1, "bytes": 8, "intra_node_bytes": 0, "inter_node_bytes": 8}},
        1: {"all_reduce": {"count": 2, "bytes": 100, "intra_node_bytes": 50, "inter_node_bytes": 50}},
    }
    assert log.summary(local_world_size=2)["all_reduce"]["bytes"] == 200
    log.mark_step(7)
    assert log.step == 7


def test_spans_nodes():
    assert spans_nodes([0, 1], local_world_size=1)
    assert not spans_nodes([0, 1], local_world_size=2)
    assert not spans_nodes([2, 3], local_world_size=2)
    assert spans_nodes([1, 2], local_world_size=2)
    assert not spans_nodes([5], local_world_size=1)
    with pytest.raises(ValueError, match="local_world_size"):
        spans_nodes([0], local_world_size=0)
