"""CollectiveLog sees every collective, whoever issues it, with exact bytes and group ranks.

Two gloo ranks run ``tests.helpers.comm_probe`` on a tiny model with parameters
of shapes [16, 8], [16], [5, 16], [5] (229 float32 = 916 bytes). What each engine issues, and
the padding rules the expected numbers below follow:

- DDP: one all_reduce per gradient bucket in backward, bytes summing to the gradient bytes;
  nothing under no_sync. The first backward uses a single bucket (torch 2.11 DDP without
  find_unused_parameters); at the second forward DDP broadcasts its rebuilt bucket order
  from rank 0 (int32) and from then on buckets follow bucket_cap_mb.
- FSDP2 (fully_shard per layer): each parameter is split on dim 0 into world-size chunks,
  dim 0 padded up to a multiple of the world size; one all_gather per layer in forward (and
  again in backward when reshard_after_forward=True) and one reduce_scatter per layer in
  backward, each of the layer's padded bytes.
- DeepSpeed ZeRO 1 and 2 (defaults: use_multi_rank_bucket_allreduce=True): the flat
  gradient bucket is all-reduced (unpadded gradient bytes), then a 4-byte all_reduce of the
  gradient norm, then one all_gather of the updated parameters, whose flat buffer is padded
  to a multiple of 2 x world size elements. With use_multi_rank_bucket_allreduce=False the
  gradients go by one reduce per owning rank instead.
- DeepSpeed ZeRO 3 (stage3_param_persistence_threshold=0): every parameter is padded to a
  multiple of the world size; gradients are reduce-scattered (padded bytes), the norm is an
  8-byte float64 all_reduce, parameters are all-gathered per module in forward and again in
  backward, or (default reuse distance and prefetching, steady state) once per step for the
  whole model. Its first two steps add int64 broadcasts of DeepSpeed's trace checks.
"""

import math

import pytest

from aurora.perf.comm_log import KINDS, CollectiveLog, CommRecord
from tests.helpers.comm_probe import probe
from tests.helpers.runs import run_main

WORLD = 2
F32 = 4


@pytest.fixture(scope="module")
def torch_runs(pool2) -> list[dict]:
    """One dict per rank: {"param_shapes": ..., "scenarios": {scenario: {phase: [record]}}}."""
    return [r.value for r in pool2.run(probe, "torch")]


@pytest.fixture(scope="module")
def deepspeed_runs(pool2) -> list[dict]:
    pytest.importorskip("deepspeed")
    return [r.value for r in pool2.run(probe, "deepspeed")]


def numels(shapes) -> list[int]:
    return [math.prod(s) for s in shapes]


def fsdp_padded(shape) -> int:
    return -(-shape[0] // WORLD) * WORLD * math.prod(shape[1:])


def records(run: dict, scenario: str, phase: str, kind: str | None = None) -> list[dict]:
    return [r for r in run["scenarios"][scenario][phase] if kind is None or r["kind"] == kind]


def total(recs: list[dict]) -> int:
    return sum(r["bytes"] for r in recs)


def test_model_is_the_documented_one(torch_runs):
    assert torch_runs[0]["param_shapes"] == [[16, 8], [16], [5, 16], [5]]
    assert sum(numels(torch_runs[0]["param_shapes"])) * F32 == 916


def test_every_record_has_a_known_kind(torch_runs, deepspeed_runs):
    for run in torch_runs + deepspeed_runs:
        for phases in run["scenarios"].values():
            for recs in phases.values():
                assert {r["kind"] for r in recs} <= set(KINDS)


@pytest.mark.parametrize("scenario", ["ddp_one_bucket", "ddp_small_buckets"])
def test_ddp_backward_all_reduces_the_gradient_bytes(torch_runs, scenario):
    for rank, run in enumerate(torch_runs):
        grad_bytes = sum(numels(run["param_shapes"])) * F32
        assert records(run, scenario, "forward0") == []
        first = records(run, scenario, "backward0")
        assert [(r["kind"], r["bytes"], r["dtype"], r["ranks"]) for r in first] == [
            ("all_reduce", grad_bytes, "float32", [0, 1])]
        assert {r["kind"] for r in records(run, scenario, "forward1")} == {"broadcast"}  # rebuilt buckets
        second = records(run, scenario, "backward1")
        assert {r["kind"] for r in second} == {"all_reduce"}
        assert total(second) == grad_bytes
        if scenario == "ddp_one_bucket":
            assert len(second) == 1
        else:  # a 16-byte cap: every gradient in its own bucket
            assert sorted(r["bytes"] for r in second) == sorted(n * F32 for n in numels(run["param_shapes"]))
        assert records(run, scenario, "no_sync") == [], f"rank {rank}: collectives under no_sync"


@pytest.mark.parametrize("scenario", ["fsdp_reshard", "fsdp_keep"])
def test_fsdp2_gathers_and_reduce_scatters_the_padded_parameter_bytes(torch_runs, scenario):
    shapes = torch_runs[0]["param_shapes"]
    per_layer = [sum(fsdp_padded(s) for s in shapes[:2]) * F32, sum(fsdp_padded(s) for s in shapes[2:]) * F32]
    assert per_layer == [576, 408]  # [16, 8] + [16];  [5, 16] -> [6, 16] + [5] -> [6]
    for run in torch_runs:
        forward = records(run, scenario, "forward")
        assert [(r["kind"], r["bytes"]) for r in forward] == [("all_gather", b) for b in per_layer]
        backward_gathers = total(records(run, scenario, "backward", "all_gather"))
        assert backward_gathers == (sum(per_layer) if scenario == "fsdp_reshard" else 0)
        scatters = records(run, scenario, "backward", "reduce_scatter")
        assert sorted(r["bytes"] for r in scatters) == sorted(per_layer)
        assert all(r["ranks"] == [0, 1] and r["dtype"] == "float32" for r in forward + scatters)


def test_collectives_inside_dtensor_ops_are_seen(torch_runs):
    """clip_grad_norm_ on FSDP2's DTensor gradients reduces the partial norms inside DTensor's
    own dispatch, where a dispatch mode is normally switched off."""
    for run in torch_runs:
        clip = records(run, "fsdp_reshard", "clip_grad_norm")
        assert clip and {r["kind"] for r in clip} == {"all_reduce"}


@pytest.mark.parametrize("scenario", ["zero1", "zero2"])
def test_deepspeed_zero12_all_reduces_gradients_and_gathers_the_aligned_flat_buffer(deepspeed_runs, scenario):
    for run in deepspeed_runs:
        n = sum(numels(run["param_shapes"]))
        aligned = -(-n // (2 * WORLD)) * (2 * WORLD)
        assert (n, aligned) == (229, 232)
        for step in ("step0", "step2"):
            assert [(r["kind"], r["bytes"], r["dtype"]) for r in records(run, scenario, step)] == [
                ("all_reduce", n * F32, "float32"),  # the gradient bucket
                ("all_reduce", F32, "float32"),  # the gradient norm
                ("all_gather", aligned * F32, "float32"),  # the updated parameter partitions
            ]


def test_deepspeed_zero2_reduce_sends_each_partition_to_its_owner(deepspeed_runs):
    for run in deepspeed_runs:
        n = sum(numels(run["param_shapes"]))
        partition = -(-n // (2 * WORLD)) * (2 * WORLD) // WORLD
        reduces = records(run, "zero2_reduce", "step2", "reduce")
        # The last partition holds the padding, which is not reduced.
        assert sorted(r["bytes"] for r in reduces) == [(n - partition) * F32, partition * F32]
        assert total(records(run, "zero2_reduce", "step2", "all_reduce")) == F32


def test_deepspeed_zero3_reduce_scatters_and_gathers_per_parameter_padded_bytes(deepspeed_runs):
    for run in deepspeed_runs:
        shapes = run["param_shapes"]
        padded = sum(-(-n // WORLD) * WORLD for n in numels(shapes)) * F32
        per_module = [sum(-(-n // WORLD) * WORLD for n in numels(shapes[i:i + 2])) * F32 for i in (0, 2)]
        assert padded == 920 and per_module == [576, 344]
        for scenario in ("zero3", "zero3_no_reuse"):
            for step in ("step0", "step2"):
                assert [r["bytes"] for r in records(run, scenario, step, "reduce_scatter")] == [padded]
                assert [(r["bytes"], r["dtype"]) for r in records(run, scenario, step, "all_reduce")] == [(8, "float64")]
        # Gathered per module for forward, again in reverse for backward ...
        module_by_module = per_module + per_module[::-1]
        assert [r["bytes"] for r in records(run, "zero3", "step0", "all_gather")] == module_by_module
        assert [r["bytes"] for r in records(run, "zero3_no_reuse", "step2", "all_gather")] == module_by_module
        # ... but by default, once the trace is known, prefetched as one and kept for backward.
        assert [r["bytes"] for r in records(run, "zero3", "step2", "all_gather")] == [padded]
        assert {r["kind"] for r in records(run, "zero3", "step1", "broadcast")} == {"broadcast"}
        assert records(run, "zero3", "step2", "broadcast") == []


def test_group_ranks_of_subgroups(torch_runs):
    for rank, run in enumerate(torch_runs):
        assert [r["ranks"] for r in records(run, "groups", "own_subgroup")] == [[rank]]
        assert [r["ranks"] for r in records(run, "groups", "new_group")] == [[0, 1]]


def test_summary_splits_bytes_by_whether_the_group_spans_nodes(torch_runs):
    log = CollectiveLog()
    log.records = [CommRecord.from_dict(r) for phase in ("own_subgroup", "new_group")
                   for r in records(torch_runs[0], "groups", phase)]
    one_per_node = log.summary(local_world_size=1)["all_reduce"]
    assert one_per_node == {"count": 2, "bytes": 24, "intra_node_bytes": 12, "inter_node_bytes": 12}
    both_on_one_node = log.summary(local_world_size=2)["all_reduce"]
    assert both_on_one_node == {"count": 2, "bytes": 24, "intra_node_bytes": 24, "inter_node_bytes": 0}


# phase: (rank 0's record, rank 1's record) as (kind, bytes, dtype); x is 10 float32 per rank.
API_EXPECTED = {
    "all_reduce": [("all_reduce", 40, "float32")] * 2,
    "all_reduce_bf16": [("all_reduce", 20, "bfloat16")] * 2,
    "all_gather_into_tensor": [("all_gather", 80, "float32")] * 2,  # the full output
    "all_gather_list": [("all_gather", 80, "float32")] * 2,
    "reduce_scatter_tensor": [("reduce_scatter", 80, "float32")] * 2,  # the full input
    "broadcast": [("broadcast", 40, "float32")] * 2,
    "reduce": [("reduce", 40, "float32")] * 2,
    "all_to_all_single": [("all_to_all", 40, "float32")] * 2,
    "barrier": [("barrier", 0, "")] * 2,
    "send_recv": [("send", 40, "float32"), ("recv", 40, "float32")],
    "functional_all_reduce": [("all_reduce", 40, "float32")] * 2,
    "dtensor_full_tensor": [("all_gather", 80, "float32")] * 2,
}


@pytest.mark.parametrize("phase", sorted(API_EXPECTED))
def test_each_api_call_is_one_record_with_its_payload(torch_runs, phase):
    for rank, run in enumerate(torch_runs):
        got = records(run, "apis", phase)
        assert [(r["kind"], r["bytes"], r["dtype"]) for r in got] == [API_EXPECTED[phase][rank]]
        assert got[0]["ranks"] == [0, 1]


def test_bench_prints_a_bandwidth_table(pool2):
    out = pool2.run(run_main, "tools.bench.comm", "--sizes-mb", "0.01,0.1", "--iters", "2", "--warmup", "1")[0].output
    rows = [line.split() for line in out.splitlines() if line.startswith(("world ", "intra "))]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (g, c, s) for g in ("world", "intra") for s in ("0.01", "0.10")
        for c in ("all_reduce", "reduce_scatter", "all_gather")]
    for r in rows:  # group size, then time and three bandwidths (4 significant digits, never "0.000")
        assert r[1] == "2" and all(math.isfinite(float(v)) and float(v) > 0 for v in r[4:])
    assert "skipped inter" in out
    intra = next(line for line in out.splitlines() if line.strip().startswith("--intra-gbps"))
    assert float(intra.split()[1]) > 0 and "GB/s" in intra and "Gb/s" in intra
    assert "--inter-gbps: not measured" in out
