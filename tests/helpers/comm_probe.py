"""Record what collectives known workloads issue on a tiny model, for the collective log's tests.

``probe("torch")`` runs DDP, FSDP2, process subgroups and one call of each torch.distributed
API; ``probe("deepspeed")`` runs ZeRO stages 1, 2 and 3, on every rank of the current process
group (gloo on CPU, nccl on GPUs). Each rank returns

    {"param_shapes": [[16, 8], [16], [5, 16], [5]],
     "scenarios": {scenario: {phase: [CommRecord.to_dict(), ...]}}}
"""

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Shard, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from aurora.perf.comm_log import CollectiveLog


def tiny_model() -> nn.Sequential:
    """144 + 85 = 229 parameters; 5 output features, so sharded engines must pad on 2 ranks."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))


def batch(device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(dist.get_rank())
    return torch.randn(4, 8, generator=g).to(device)


def logged(fn) -> list[dict]:
    with CollectiveLog() as log:
        fn()
    return dicts(log)


def dicts(log: CollectiveLog) -> list[dict]:
    return [r.to_dict() for r in log.records]


def ddp_phases(device: torch.device, bucket_cap_mb: float) -> dict:
    model = DistributedDataParallel(tiny_model().to(device), bucket_cap_mb=bucket_cap_mb)
    phases = {}
    for it in range(2):  # the second iteration runs with DDP's rebuilt buckets
        with CollectiveLog() as forward:
            loss = model(batch(device)).sum()
        with CollectiveLog() as backward:
            loss.backward()
        phases[f"forward{it}"], phases[f"backward{it}"] = dicts(forward), dicts(backward)

    def no_sync_step():
        with model.no_sync():
            model(batch(device)).sum().backward()

    phases["no_sync"] = logged(no_sync_step)
    return phases


def fsdp_phases(device: torch.device, reshard_after_forward: bool) -> dict:
    model = tiny_model().to(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh)
    with CollectiveLog() as forward:
        loss = model(batch(device)).sum()
    with CollectiveLog() as backward:
        loss.backward()
    with CollectiveLog() as clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    return {"forward": dicts(forward), "backward": dicts(backward), "clip_grad_norm": dicts(clip)}


def group_phases(device: torch.device) -> dict:
    own, _ = dist.new_subgroups(group_size=1)
    pair = dist.new_group(list(range(dist.get_world_size())))
    t = torch.ones(3, device=device)
    return {"own_subgroup": logged(lambda: dist.all_reduce(t, group=own)),
            "new_group": logged(lambda: dist.all_reduce(t, group=pair))}


def api_phases(device: torch.device) -> dict:
    """One call per API on float32 tensors of 10 elements (40 bytes) per rank."""
    world, rank = dist.get_world_size(), dist.get_rank()
    x = torch.ones(10, device=device)
    mesh = init_device_mesh(device.type, (world,))
    sharded = distribute_tensor(torch.ones(10 * world, device=device), mesh, [Shard(0)])

    def send_recv():
        if rank == 0:
            dist.send(x, dst=1)
        elif rank == 1:
            dist.recv(x, src=0)

    return {
        "all_reduce": logged(lambda: dist.all_reduce(x)),
        "all_reduce_bf16": logged(lambda: dist.all_reduce(x.bfloat16())),
        "all_gather_into_tensor": logged(lambda: dist.all_gather_into_tensor(x.new_empty(10 * world), x)),
        "all_gather_list": logged(lambda: dist.all_gather([torch.empty_like(x) for _ in range(world)], x)),
        "reduce_scatter_tensor": logged(lambda: dist.reduce_scatter_tensor(x.clone(), x.new_ones(10 * world))),
        "broadcast": logged(lambda: dist.broadcast(x, src=0)),
        "reduce": logged(lambda: dist.reduce(x, dst=0)),
        "all_to_all_single": logged(lambda: dist.all_to_all_single(torch.empty_like(x), x)),
        "barrier": logged(dist.barrier),
        "send_recv": logged(send_recv),
        "functional_all_reduce": logged(lambda: funcol.all_reduce(x, "sum", dist.group.WORLD).wait()),
        "dtensor_full_tensor": logged(sharded.full_tensor),
    }


def torch_scenarios(device: torch.device) -> dict:
    return {
        "ddp_one_bucket": ddp_phases(device, bucket_cap_mb=25),
        # 16 bytes: smaller than every parameter, so each gradient is its own bucket.
        "ddp_small_buckets": ddp_phases(device, bucket_cap_mb=16 / 2**20),
        "fsdp_reshard": fsdp_phases(device, reshard_after_forward=True),
        "fsdp_keep": fsdp_phases(device, reshard_after_forward=False),
        "groups": group_phases(device),
        "apis": api_phases(device),
    }


def deepspeed_phases(device: torch.device, stage: int, **zero: object) -> dict:
    import deepspeed

    model = tiny_model()
    config = {"train_micro_batch_size_per_gpu": 4, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": stage, "reduce_bucket_size": 10**6, "allgather_bucket_size": 10**6,
                                    # as aurora's engine: else ZeRO-3 replaces F.linear in the whole process
                                    "memory_efficient_linear": False, **zero}}
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    with CollectiveLog() as log:
        for step in range(3):
            log.mark_step(step)
            loss = engine(batch(device)).sum()
            engine.backward(loss)
            engine.step()
    records = dicts(log)
    return {f"step{s}": [r for r in records if r["step"] == s] for s in range(3)}


def deepspeed_scenarios(device: torch.device) -> dict:
    import deepspeed

    deepspeed.init_distributed(dist_backend=dist.get_backend())
    return {
        "zero1": deepspeed_phases(device, 1),
        "zero2": deepspeed_phases(device, 2),
        "zero2_reduce": deepspeed_phases(device, 2, use_multi_rank_bucket_allreduce=False),
        # Threshold 0: no parameter stays gathered between steps ("persistent").
        "zero3": deepspeed_phases(device, 3, stage3_param_persistence_threshold=0),
        "zero3_no_reuse": deepspeed_phases(device, 3, stage3_param_persistence_threshold=0,
                                           stage3_max_reuse_distance=0, stage3_prefetch_bucket_size=0),
    }


def probe(which: str) -> dict:
    """The records of the ``which`` ("torch" or "deepspeed") workloads on this rank."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    scenarios = {"torch": torch_scenarios, "deepspeed": deepspeed_scenarios}[which](device)
    dist.barrier()  # leave together: the next task must not meet a collective of this one
    return {"param_shapes": [list(p.shape) for p in tiny_model().parameters()], "scenarios": scenarios}
