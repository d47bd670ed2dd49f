"""Multi-node without a cluster: four pool ranks as two nodes of two (ranks 0-1 are "node 0",
ranks 2-3 "node 1"), each with its node's GROUP_RANK and LOCAL_WORLD_SIZE, as torchrun gives
them on a cluster.

Checked: the node-local and cross-node groups; HSDP (shard in the node, replicate across)
and hierarchical sync with K=1 against a single process on the same global batches (K=1 with
SGD is exactly data parallelism: the average of the nodes' SGD updates is the update of the
averaged gradient); cross-node traffic only every K steps; the outer optimizer's state
resumes from a checkpoint bit for bit.
"""

import pytest
import torch
import torch.distributed as dist

from aurora.perf.traffic import collective_bytes_per_step
from tests.helpers.comm import lm_param_counts, model_state_bytes
from tests.helpers.runs import GAN_SGD, assert_same_weights, cli, lm_train_args, read_metrics, weights
from tests.helpers.steps import assert_same_steps, fixed_batch_steps

LM = ["trainer.progress_bar=false", "data.context_frames=24", "model.backbone.num_hidden_layers=2",
      "model.backbone.hidden_size=64", "model.backbone.intermediate_size=128"]
SGD = ["optim.name=sgd", "optim.momentum=0.9", "optim.lr=0.05"]


def _steps(pool, tmp_path, shards, name: str, *overrides) -> dict:
    args = [f"run.dir={tmp_path / name}", f"data.shards={shards}", *LM, *overrides]
    return pool.run(fixed_batch_steps, "configs/lm/tiny.yaml", args)[0].value


def node_groups() -> dict:
    """Where this rank sits: its node, and the ranks of its node-local (shard) and cross-node
    (replicate) groups in aurora's node mesh."""
    from aurora.config.schema import DistConfig
    from aurora.distributed import init_distributed
    from aurora.distributed.mesh import REPLICATE, SHARD, node_mesh

    env = init_distributed(DistConfig())
    mesh = node_mesh(env)
    return {"rank": env.rank, "node_rank": env.node_rank, "num_nodes": env.num_nodes,
            "local_rank": env.local_rank, "local_world_size": env.local_world_size,
            "shard": dist.get_process_group_ranks(mesh.get_group(SHARD)),
            "replicate": dist.get_process_group_ranks(mesh.get_group(REPLICATE))}


def test_node_local_and_cross_node_groups(pool2x2):
    ranks = [r.value for r in pool2x2.run(node_groups)]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    for r in ranks:
        assert (r["num_nodes"], r["local_world_size"]) == (2, 2)
        assert r["node_rank"] == r["rank"] // 2 and r["local_rank"] == r["rank"] % 2
        assert r["shard"] == [0, 1] if r["node_rank"] == 0 else r["shard"] == [2, 3]  # the node
        assert r["replicate"] == [r["local_rank"], r["local_rank"] + 2]  # same local rank, every node


def _assert_volumes_as_modelled(run: dict, mode: str, outer_every: int = 1) -> None:
    """Rank 0's model-state collectives in steps 2 and 3, in all and across nodes, against the
    traffic model for 2 nodes x 2 ranks (within 2%: FSDP2 pads shards). Step 1 also holds the
    step runner's own gathers of the first step's gradients."""
    params, root = lm_param_counts(LM[1:])
    for step in (2, 3):
        real = model_state_bytes(run["comm"], step, local_world_size=2)
        predicted = collective_bytes_per_step(mode, params, 4, world=4, gpus_per_node=2, outer_every=outer_every,
                                              step=step, root_params=root)
        for kind, nbytes in predicted.items():
            assert real.get(kind, 0) == pytest.approx(nbytes, rel=0.02), (step, kind, real, predicted)


@pytest.fixture(scope="module")
def single(tmp_path_factory, token_shards, pool1) -> dict:
    """One process, the same global batches: AdamW and SGD."""
    tmp = tmp_path_factory.mktemp("single")
    return {"adamw": _steps(pool1, tmp, token_shards, "adamw"), "sgd": _steps(pool1, tmp, token_shards, "sgd", *SGD)}


def test_hsdp_matches_single_process(tmp_path, token_shards, single, pool2x2):
    hsdp = _steps(pool2x2, tmp_path, token_shards, "hsdp", "engine.name=fsdp", "engine.fsdp.hsdp=true")
    assert_same_steps(single["adamw"], hsdp)
    _assert_volumes_as_modelled(hsdp, "hsdp")


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_hierarchical_sync_every_step_equals_data_parallelism(tmp_path, token_shards, single, pool2x2, engine):
    k1 = _steps(pool2x2, tmp_path, token_shards, "k1", *SGD, f"engine.name={engine}", "sync.mode=hierarchical",
                "sync.outer_every=1")
    assert_same_steps(single["sgd"], k1, reduced=False)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_cross_node_traffic_only_every_k_steps(tmp_path, token_shards, pool2x2, engine):
    """K=3: steps 1 and 2 send no model state across nodes (only the loop's few-float control
    all-reduce spans the world), step 3 averages the parameters: P/2 per rank under DDP (a
    two-level average), each rank's FSDP shard under fsdp."""
    run = _steps(pool2x2, tmp_path, token_shards, "k3", f"engine.name={engine}", "sync.mode=hierarchical",
                 "sync.outer_every=3")
    cross = [sum(v for k, v in model_state_bytes(run["comm"], step, 2).items() if k.endswith("_inter_node"))
             for step in (1, 2, 3)]
    assert cross[0] == cross[1] == 0 < cross[2]
    _assert_volumes_as_modelled(run, "hierarchical" if engine == "ddp" else "hierarchical_fsdp", outer_every=3)


def test_codec_trains_under_hsdp_and_hierarchical_sync(tmp_path, audio_shards, pool1, pool2x2):
    """The GAN codec recipe (generator and discriminator, two optimizers) on 2 nodes x 2 ranks:
    HSDP gives the single process's numbers for both models; hierarchical sync (FSDP in the
    node, K=3) ends with equal replicas of both on every rank (the step runner checks) after its
    one cross-node average. Both models on SGD, quantizer dropout off, fewer sub-discriminators
    (``GAN_SGD``: AdamW would turn the reduction order's rounding into visible weight differences,
    as measured on an AVX-512 Xeon; the smaller GAN is a quarter of the work on 4 ranks and 2
    cores)."""
    def codec(pool, name, *overrides):
        args = [f"run.dir={tmp_path / name}", f"data.shards={audio_shards}", "trainer.progress_bar=false",
                "data.segment_seconds=0.2", *GAN_SGD, *overrides]
        return pool.run(fixed_batch_steps, "configs/codec/tiny.yaml", args)[0].value

    assert_same_steps(codec(pool1, "single"), codec(pool2x2, "hsdp", "engine.name=fsdp", "engine.fsdp.hsdp=true"))
    k3 = codec(pool2x2, "k3", "engine.name=fsdp", "sync.mode=hierarchical", "sync.outer_every=3")
    assert all(torch.isfinite(torch.tensor(k3["losses"])))


@pytest.mark.parametrize("outer_every", [2, 3], ids=["on_boundary", "off_boundary"])
def test_outer_optimizer_state_resumes_bit_identical(tmp_path, token_shards, pool2x2, outer_every):
    """DiLoCo (nesterov outer steps): stopped after step 2 and resumed to 4, the run ends with the
    weights of an uninterrupted one, which needs the outer anchor and momentum. Every 3 steps, the
    saves at steps 2 and 4 fall between outer steps: each forces one (the nodes' copies differ
    there, and a checkpoint holds one), in both runs alike."""
    def train(run_dir, max_steps):
        args = lm_train_args(run_dir, token_shards, max_steps, "data.batch_size=2", "engine.name=ddp",
                             "sync.mode=hierarchical", f"sync.outer_every={outer_every}", "sync.outer_optimizer=nesterov",
                             "trainer.checkpoint_every=2", "optim.decay_steps=4")
        assert [r.value for r in pool2x2.run(cli, *args)] == [0] * 4

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, 4)
    train(resumed, 2)
    train(resumed, 4)
    assert [m["step"] for m in read_metrics(resumed)] == [1, 2, 3, 4]
    assert_same_weights(weights(straight), weights(resumed))
