"""The scaling cost model (tools/scale, tools/scale_model.py) on hand-computed cases, and its CLI."""

import json

import pytest
import torch

from aurora.config import load_config
from aurora.models.transformer import TRANSFORMER_PRESETS, Qwen2Model, TransformerConfig
from aurora.tasks.lm import LMTrainConfig
from tools import scale_model
from tools.scale.collectives import (
    Group,
    Links,
    all_reduce_latency_s,
    collective_s,
    network_bytes,
    ring_all_gather_s,
    ring_all_reduce_s,
    ring_reduce_scatter_s,
)
from aurora.perf.traffic import MODES, state_memory
from tools.scale.predict import Batch, Cluster, plan_batch, predict
from tools.scale.profile import layer_activation_bytes_per_token, load_profile
from tools.scale_model import collective_bytes_per_step

GB = 1e9
P = 1_000_000


def test_ring_formulas_by_hand():
    # 1 GB over 8 GPUs at 100 GB/s: each GPU sends 2 * 7/8 GB.
    assert ring_all_reduce_s(1 * GB, 8, 100 * GB) == pytest.approx(0.0175)
    assert ring_reduce_scatter_s(1 * GB, 8, 100 * GB) == pytest.approx(0.00875)
    assert ring_all_gather_s(1 * GB, 8, 100 * GB) == pytest.approx(0.00875)
    assert ring_all_reduce_s(1 * GB, 8, 100 * GB, alpha_s=1e-6) == pytest.approx(0.0175 + 14e-6)
    assert ring_all_reduce_s(1 * GB, 1, 100 * GB, alpha_s=1e-6) == 0
    # Latency: ring 2(n-1) steps against the tree's 2 log2(n); the smaller is taken.
    assert all_reduce_latency_s(2, 1.0) == 2
    assert all_reduce_latency_s(8, 1.0) == 6
    assert all_reduce_latency_s(1024, 1.0) == 20


def test_hierarchical_collective_by_hand():
    links = Links(intra_bytes_per_s=100 * GB, inter_bytes_per_s=10 * GB)
    one_node = Group(per_node=8, nodes=1)
    assert collective_s("all_reduce", 1 * GB, one_node, links) == pytest.approx(0.0175)
    # 4 nodes x 8: NVLink part over 8, then 8 parallel rings (one per NIC) of 1/8 GB over 4 nodes.
    nodes = Group(per_node=8, nodes=4)
    assert collective_s("all_reduce", 1 * GB, nodes, links) == pytest.approx(0.0175 + 2 * 3 / 4 * 0.125 / 10)
    assert collective_s("all_gather", 1 * GB, nodes, links) == pytest.approx(0.00875 + 3 / 4 * 0.125 / 10)
    assert network_bytes("all_reduce", 1 * GB, nodes) == pytest.approx(2 * 3 / 4 * GB / 8)
    assert network_bytes("reduce_scatter", 1 * GB, nodes) == pytest.approx(3 / 4 * GB / 8)
    assert network_bytes("all_gather", 1 * GB, one_node) == 0
    # One rank per node: a ring over the nodes at the NIC's bandwidth.
    assert collective_s("all_reduce", 1 * GB, Group(1, 4), links) == pytest.approx(2 * 3 / 4 * 1 / 10)
    with pytest.raises(ValueError, match="unknown collective 'broadcast'"):
        collective_s("broadcast", 1, one_node, links)


def test_bytes_ddp_sync_once_per_step():
    for accum in (1, 4):
        out = collective_bytes_per_step("ddp", P, 4, world=16, gpus_per_node=8, grad_accum=accum)
        assert out["all_reduce"] == out["all_reduce_inter_node"] == 4 * P
        assert out["all_gather"] == out["reduce_scatter"] == 0


def test_bytes_fsdp_gathers_every_micro_batch():
    out = collective_bytes_per_step("fsdp", P, 2, world=8, gpus_per_node=8, grad_accum=3)
    assert out["all_gather"] == 3 * 2 * 2 * P  # forward + backward, every micro-batch
    assert out["reduce_scatter"] == 2 * P  # once, on the last micro-batch
    assert out["all_reduce"] == 0
    assert out["all_gather_inter_node"] == out["reduce_scatter_inter_node"] == 0  # one node
    assert collective_bytes_per_step("zero3", P, 2, world=8, gpus_per_node=8, grad_accum=3)["reduce_scatter"] == 3 * 2 * P


def test_bytes_hsdp_crosses_nodes_with_a_shard_only():
    out = collective_bytes_per_step("hsdp", P, 4, world=32, gpus_per_node=8)
    assert out["reduce_scatter"] == 4 * P and out["reduce_scatter_inter_node"] == 0
    assert out["all_reduce"] == out["all_reduce_inter_node"] == 4 * P // 8


def test_bytes_deepspeed_zero12():
    one = collective_bytes_per_step("zero1", P, 4, world=16, gpus_per_node=8, grad_accum=2)
    two = collective_bytes_per_step("zero2", P, 4, world=16, gpus_per_node=8, grad_accum=2)
    assert one["all_reduce"] == 4 * P and two["all_reduce"] == 2 * 4 * P
    assert one["all_gather"] == two["all_gather"] == 4 * P


def test_hierarchical_averages_across_nodes_every_k_steps():
    def cross(mode, k, step):
        return collective_bytes_per_step(mode, P, 4, world=32, gpus_per_node=8, outer_every=k, step=step)

    assert cross("hierarchical", 8, 7)["all_reduce_inter_node"] == 0
    # Two levels: each of the node's 8 ranks averages an eighth across nodes, the node gathers them.
    assert cross("hierarchical", 8, 8)["all_reduce_inter_node"] == 4 * P // 8
    assert cross("hierarchical", 8, 8)["all_reduce"] == 4 * P + 4 * P // 8  # the node's DDP, plus the average
    assert cross("hierarchical", 8, 8)["all_gather"] == 4 * P
    assert cross("hierarchical", 8, 8)["all_gather_inter_node"] == 0
    assert cross("hierarchical_fsdp", 8, 16)["all_reduce_inter_node"] == 4 * P // 8
    for mode in ("hierarchical", "hierarchical_fsdp"):
        every = sum(cross(mode, 1, s)["all_reduce_inter_node"] for s in range(1, 9))
        eighth = sum(cross(mode, 8, s)["all_reduce_inter_node"] for s in range(1, 9))
        assert every == 8 * eighth > 0


def test_bytes_errors():
    with pytest.raises(ValueError, match="unknown mode 'zero4'"):
        collective_bytes_per_step("zero4", P, 4, 8, 8)
    with pytest.raises(ValueError, match="world 12 is not a whole number of 8-GPU nodes"):
        collective_bytes_per_step("ddp", P, 4, 12, 8)


def test_state_memory_sharding():
    ddp = state_memory("ddp", P, 64, 8, 1, storage_bytes=4, compute_bytes=2)
    assert ddp.total == 16 * P  # fp32 params and grads, two fp32 AdamW moments
    assert state_memory("ddp", P, 64, 8, 1, storage_bytes=2, compute_bytes=2).total == 16 * P  # 2 + 2 + 12
    zero3 = state_memory("zero3", P, 64, 8, 1, storage_bytes=4, compute_bytes=2)
    assert zero3.total == pytest.approx(ddp.total / 64)
    assert state_memory("zero1", P, 64, 8, 1, 4, 2).total == pytest.approx(8 * P + 8 * P / 64)
    assert state_memory("hsdp", P, 64, 8, 1, 4, 2).total == pytest.approx(ddp.total / 8)
    # FSDP2 accumulating keeps unsharded gradients between micro-batches.
    assert state_memory("fsdp", P, 64, 8, 4, 4, 2).grads == 4 * P


def test_layer_activation_formula_matches_what_autograd_saves():
    """The per-layer estimate is exact for this block: the bytes autograd saves for a second
    layer (fp32 and bf16; the CPU's flash attention keeps O(S) like the GPU's), weights excluded."""

    def saved_bytes(model, ids):
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids)
        return sum(seen.values())

    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    for dtype, act_bytes in ((torch.float32, 4), (torch.bfloat16, 2)):
        sizes = []
        for layers in (1, 2):
            cfg = TransformerConfig(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=layers,
                                    num_attention_heads=8, num_key_value_heads=2)
            torch.manual_seed(0)
            sizes.append(saved_bytes(Qwen2Model(cfg).to(dtype), ids))
        assert sizes[1] - sizes[0] == 64 * layer_activation_bytes_per_token(cfg, act_bytes)


def cluster(intra=900.0, inter_gbits=400.0, alpha_us=(3.0, 7.0)) -> Cluster:
    links = Links(intra * GB, inter_gbits * GB / 8, alpha_us[0] * 1e-6, alpha_us[1] * 1e-6)
    return Cluster(gpus_per_node=8, links=links, peak_flops=989.5e12, mfu=0.45, overlap=0.8, memory_bytes=80 * 2**30)


@pytest.fixture(scope="module")
def tiny_profile():
    return load_profile("configs/lm/tiny.yaml")


def test_efficiency_at_most_one_and_one_on_free_links(tiny_profile):
    for mode in MODES:
        for world in (1, 8, 64, 4096):
            r = predict(tiny_profile, mode, world, cluster(), Batch(8, 2), outer_every=8, storage_bytes=4)
            assert 0 < r.efficiency <= 1 and r.exposed_s <= r.comm_s + 1e-12
            free = predict(tiny_profile, mode, world, cluster(1e12, 1e12, (0.0, 0.0)), Batch(8, 2), 8, 4)
            assert free.efficiency == pytest.approx(1.0, abs=1e-6)


def test_hierarchical_k1_moves_more_across_nodes_than_k8(tiny_profile):
    k1 = predict(tiny_profile, "hierarchical_fsdp", 64, cluster(), Batch(8, 1), outer_every=1, storage_bytes=4)
    k8 = predict(tiny_profile, "hierarchical_fsdp", 64, cluster(), Batch(8, 1), outer_every=8, storage_bytes=4)
    assert k1.network_bytes == pytest.approx(8 * k8.network_bytes) and k8.network_bytes > 0
    assert k1.step_s > k8.step_s


def test_global_batch_is_split_over_the_world(tiny_profile):
    frames = tiny_profile.frames
    assert plan_batch(tiny_profile, 8, 8, 1, None) == Batch(8, 1)
    assert plan_batch(tiny_profile, 8, 8, 1, 8 * 32 * frames) == Batch(8, 4)
    assert plan_batch(tiny_profile, 64, 8, 1, 64 * 3 * frames) == Batch(3, 1)
    with pytest.raises(ValueError, match="less than one per GPU at 4096 GPUs"):
        plan_batch(tiny_profile, 4096, 8, 1, 64 * frames)


def test_qwen2_configs_load_with_the_preset_shapes():
    for size in ("0.5b", "1.5b", "7b"):
        cfg = load_config(LMTrainConfig, f"configs/lm/qwen2_{size}.yaml")
        assert cfg.model.backbone == TRANSFORMER_PRESETS[f"qwen2-{size}"]
        assert (cfg.model.n_q, cfg.model.codebook_size) == (8, 1024)
        assert 1500 <= cfg.data.context_frames <= 3000
        assert cfg.engine.name.value == "fsdp" and cfg.engine.precision.value == "bf16"


@pytest.mark.parametrize("config, peak_tflops", [("configs/lm/tiny.yaml", 494.5),  # fp32, as TF32
                                                  ("configs/lm/qwen2_0.5b.yaml", 989.5)])  # bf16
def test_cli_json(config, peak_tflops, capsys):
    scale_model.main(["--model", config, "--gpus", "8,64,4096", "--json"])
    [report] = json.loads(capsys.readouterr().out)
    assert len(report["rows"]) == 3 * len(MODES)
    assert all(0 < row["efficiency"] <= 1 for row in report["rows"])
    assert report["peak_flops"] == pytest.approx(peak_tflops * 1e12)  # H100 SXM, dense
    if "qwen2" in config:
        assert report["params"] == pytest.approx(508.7e6, rel=1e-3)
        zero3 = {r["gpus"]: r for r in report["rows"] if r["mode"] == "zero3"}
        assert zero3[64]["memory_bytes"]["optimizer"] == pytest.approx(report["params"] * 8 / 64)


def test_cli_table_on_a_codec(capsys):
    scale_model.main(["--model", "configs/codec/tiny.yaml", "--gpus", "8,16", "--modes", "ddp,hierarchical",
                      "--global-batch-tokens", "6400"])
    out = capsys.readouterr().out
    assert "inter 400 Gb/s = 50 GB/s per GPU" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("ddp ", "hierarchical "))]
    assert [(r[0], r[1]) for r in rows] == [("ddp", "8"), ("ddp", "16"), ("hierarchical", "8"), ("hierarchical", "16")]
    assert "best fitting mode per world size" in out


def test_cli_units_and_errors(capsys, tmp_path):
    args = scale_model.parse_args(["--model", "configs/lm/tiny.yaml", "--inter-gbps", "400", "--intra-gbps", "900"])
    links = scale_model.cluster_for(args, load_profile("configs/lm/tiny.yaml")).links
    assert links.inter_bytes_per_s == 50 * GB and links.intra_bytes_per_s == 900 * GB
    for argv, message in ((["--gpus", "12"], "not whole numbers of 8-GPU nodes"),
                          (["--modes", "ddp,zero4"], "unknown mode(s) zero4"),
                          (["--grad-accum", "2", "--global-batch-tokens", "1000"], "pass one of them")):
        with pytest.raises(SystemExit):
            scale_model.parse_args(["--model", "configs/lm/tiny.yaml", *argv])
        assert message in capsys.readouterr().err
    (tmp_path / "other.yaml").write_text("task: nosuchtask\n")
    with pytest.raises(SystemExit, match="unknown task 'nosuchtask'"):
        scale_model.main(["--model", str(tmp_path / "other.yaml")])
