"""What each data-parallel mode communicates per step and keeps in memory per GPU, as aurora's
engines run it (aurora/engines, aurora/distributed/hierarchical.py) on the current torch and DeepSpeed.

Modes (G micro-batches per optimizer step, P parameters, g GPUs per node, m nodes):

- ddp: DDP over all ranks. all_reduce of the gradients (P) on the last micro-batch only
  (the others run under no_sync), in buckets, overlapped with backward.
- fsdp: FSDP2 fully_shard over all ranks, reshard_after_forward. Every micro-batch all-gathers
  the parameters in forward and again in backward (also under set_requires_gradient_sync(False));
  the gradients are reduce-scattered once, on the last micro-batch.
- hsdp: FSDP2 on the (replicate, shard) mesh: the fsdp collectives inside the node, then an
  all_reduce of each rank's gradient shard (P/g) with its peers on the other nodes.
- zero1, zero2: DeepSpeed ZeRO-1/2. DeepSpeed (0.19, ``use_multi_rank_bucket_allreduce``, on by
  default) reduces gradient buckets with all_reduce, each rank keeping its partition: once per
  step for ZeRO-1, every micro-batch for ZeRO-2 (it keeps only partitioned gradients). After the
  optimizer step each rank's updated partition is all-gathered (P), not overlapped.
- zero3: DeepSpeed ZeRO-3, like fsdp (without a root unit kept gathered: every parameter is
  gathered again in backward), but the gradients are reduce-scattered every micro-batch. An
  upper bound for models that fit DeepSpeed's live-parameter budget
  (``stage3_max_live_parameters``, default 1e9 elements): those stay gathered from forward to
  backward, and small parameters (``stage3_param_persistence_threshold``) stay gathered.
- hierarchical: DDP inside each node every step; every K = outer_every steps, after the
  optimizer step, each rank all-reduces its 1/g slice of the parameters (P/g, rounded up) with
  its peers of the same local rank on the other nodes, then the node all-gathers the slices
  (aurora.distributed.hierarchical): a two-level all-reduce. On one node there is nothing to average.
- hierarchical_fsdp: the same with FSDP2 inside the node: the fsdp collectives over the node,
  and every K steps each rank averages its parameter shard (P/g) across nodes.

Payloads follow aurora.perf.comm_log: all_reduce the tensor, all_gather the full gathered
output, reduce_scatter the full input. Every collective is counted as issued, also on a
group of one rank (it moves nothing, and takes no time in ``collectives``), except the
hierarchical modes' average, which aurora skips on one node. Only model-state
collectives are modelled: the loop's few-scalar all-reduces (loss, metrics, finiteness,
gradient norm) are not.
"""

import math
from dataclasses import dataclass

MODES = ("ddp", "fsdp", "hsdp", "zero1", "zero2", "zero3", "hierarchical", "hierarchical_fsdp")
KINDS = ("all_reduce", "reduce_scatter", "all_gather")
WHEN = ("forward", "backward", "backward_last", "update", "outer")


@dataclass(frozen=True)
class Group:
    """The shape of a process group: `per_node` of its ranks on each of `nodes` nodes."""

    per_node: int
    nodes: int

    @property
    def size(self) -> int:
        return self.per_node * self.nodes

    @property
    def spans_nodes(self) -> bool:
        return self.nodes > 1


@dataclass(frozen=True)
class Collective:
    """One collective a rank issues, with its payload in elements."""

    kind: str
    """all_reduce, reduce_scatter or all_gather."""
    numel: int
    """Payload elements per occurrence (all_gather: the full output; reduce_scatter: the full input)."""
    group: str
    """world (all ranks), node (the ranks of this node) or replicate (this local rank on every node)."""
    when: str
    """forward / backward: every micro-batch, hidden behind that pass; backward_last: the last
    micro-batch's backward only; update: after every optimizer step; outer: after the
    optimizer step of steps that are multiples of outer_every. Nothing hides update or outer."""
    dtype: str
    """compute: parameters gathered in the compute dtype (FSDP2's param_dtype); storage: the
    dtype parameters and gradients are stored in."""
    issued_per: str
    """How the payload is split into calls (for the latency term): unit (one call per FSDP
    unit), ddp_bucket, ds_reduce_bucket, ds_gather_bucket or once."""


def group_shape(group: str, world: int, gpus_per_node: int) -> Group:
    """The Group (ranks per node, nodes) of a schedule's group name in a world of this size."""
    if world < 1 or gpus_per_node < 1:
        raise ValueError(f"world ({world}) and gpus_per_node ({gpus_per_node}) must be >= 1")
    if world > gpus_per_node and world % gpus_per_node:
        raise ValueError(f"world {world} is not a whole number of {gpus_per_node}-GPU nodes: use a multiple "
                         f"of gpus_per_node")
    per_node = min(world, gpus_per_node)
    nodes = world // per_node
    return {"world": Group(per_node, nodes), "node": Group(per_node, 1), "replicate": Group(1, nodes)}[group]


def schedule(mode: str, params: int, world: int, gpus_per_node: int, root_params: int = 0) -> list[Collective]:
    """The collectives one rank issues for `mode` (see the module docstring). `root_params`:
    parameters of aurora's FSDP root unit (embeddings, heads, final norm), which stays gathered
    from forward to backward, so the backward all-gather leaves them out."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    shard = math.ceil(params / group_shape("node", world, gpus_per_node).size)
    if mode == "ddp":
        return [Collective("all_reduce", params, "world", "backward_last", "storage", "ddp_bucket")]
    if mode == "fsdp":
        return _fsdp2("world", params, root_params)
    if mode == "hsdp":
        return _fsdp2("node", params, root_params) + [Collective("all_reduce", shard, "replicate", "backward_last", "storage", "unit")]
    if mode in ("zero1", "zero2"):
        when = "backward_last" if mode == "zero1" else "backward"
        return [Collective("all_reduce", params, "world", when, "storage", "ds_reduce_bucket"),
                Collective("all_gather", params, "world", "update", "storage", "ds_gather_bucket")]
    if mode == "zero3":
        return [Collective("all_gather", params, "world", "forward", "storage", "unit"),
                Collective("all_gather", params, "world", "backward", "storage", "unit"),
                Collective("reduce_scatter", params, "world", "backward", "storage", "unit")]
    one_node = group_shape("replicate", world, gpus_per_node).size == 1  # then the average is skipped
    if mode == "hierarchical":
        per_node = group_shape("node", world, gpus_per_node).size
        outer = [Collective("all_reduce", shard, "replicate", "outer", "storage", "once"),
                 Collective("all_gather", shard * per_node, "node", "outer", "storage", "once")]
        return [Collective("all_reduce", params, "node", "backward_last", "storage", "ddp_bucket")] + outer * (not one_node)
    outer = [Collective("all_reduce", shard, "replicate", "outer", "storage", "once")]
    return _fsdp2("node", params, root_params) + outer * (not one_node)


def _fsdp2(group: str, params: int, root_params: int) -> list[Collective]:
    """FSDP2 over `group`: all-gather in forward and backward, reduce-scatter on the last micro-batch."""
    return [Collective("all_gather", params, group, "forward", "compute", "unit"),
            Collective("all_gather", params - root_params, group, "backward", "compute", "unit"),
            Collective("reduce_scatter", params, group, "backward_last", "storage", "unit")]


def occurrences(when: str, grad_accum: int, outer_every: int, step: int) -> int:
    """How often a collective issued `when` runs in optimizer step `step` (1-based)."""
    if when in ("forward", "backward"):
        return grad_accum
    if when == "outer":
        return int(step % outer_every == 0)
    return 1


def collective_bytes_per_step(mode: str, param_count: int, bytes_per_param: int, world: int, gpus_per_node: int,
                              grad_accum: int = 1, outer_every: int = 1, step: int = 1,
                              root_params: int = 0) -> dict[str, int]:
    """Payload bytes one rank passes to each kind of collective in optimizer step `step`
    (1-based; hierarchical modes average across nodes when step % outer_every == 0).

    Keys: ``all_reduce``, ``reduce_scatter``, ``all_gather`` (every collective of that kind), and
    ``all_reduce_inter_node``, ``reduce_scatter_inter_node``, ``all_gather_inter_node`` (the part
    issued on groups spanning nodes, as ``aurora.perf.comm_log.spans_nodes`` decides, with ranks
    numbered node-major); the intra-node part is the difference. Payloads as in
    ``aurora.perf.comm_log``: all_reduce the tensor, all_gather the full output, reduce_scatter
    the full input; every tensor at bytes_per_param.

    ``root_params``: parameters of the FSDP root unit, which stays gathered from forward to
    backward (as in ``schedule``). Idealised against a real run: DeepSpeed ZeRO-3 keeps parameters
    under ``stage3_param_persistence_threshold`` elements gathered; FSDP2 pads each parameter's
    first dimension to a multiple of the shard group; only model-state collectives count.
    """
    out = {key: 0 for kind in KINDS for key in (kind, f"{kind}_inter_node")}
    for c in schedule(mode, param_count, world, gpus_per_node, root_params):
        nbytes = c.numel * bytes_per_param * occurrences(c.when, grad_accum, outer_every, step)
        out[c.kind] += nbytes
        if group_shape(c.group, world, gpus_per_node).spans_nodes:
            out[f"{c.kind}_inter_node"] += nbytes
    return out


@dataclass(frozen=True)
class StateMemory:
    """Bytes per GPU of the model state (activations apart)."""

    params: float
    grads: float
    optimizer: float
    gathered: float
    """Parameters gathered for compute at a time: FSDP2 keeps the root unit and two blocks (the
    one computing and the one prefetched); ZeRO-3 the larger of the root's modules together
    and two blocks."""

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.gathered


def state_memory(mode: str, params: int, world: int, gpus_per_node: int, grad_accum: int, storage_bytes: int,
                 compute_bytes: int, root_params: int = 0, max_unit_params: int = 0) -> StateMemory:
    """Parameters, gradients and AdamW state per GPU. Parameters and gradients are stored at
    storage_bytes each; AdamW keeps two fp32 moments (8 bytes), plus an fp32 master copy (4)
    when the parameters are stored in 16 bits. FSDP2 accumulating over several micro-batches
    keeps unsharded gradients between them (set_requires_gradient_sync(False))."""
    optim_bytes = 8 if storage_bytes == 4 else 12
    world_shard = group_shape("world", world, gpus_per_node).size
    node_shard = group_shape("node", world, gpus_per_node).size
    p, g, o = params * storage_bytes, params * storage_bytes, params * optim_bytes
    gathered_params = root_params + 2 * max_unit_params
    if mode in ("ddp", "hierarchical"):
        return StateMemory(p, g, o, 0)
    if mode in ("fsdp", "hsdp", "hierarchical_fsdp"):
        n = world_shard if mode == "fsdp" else node_shard
        return StateMemory(p / n, g if grad_accum > 1 else g / n, o / n, gathered_params * compute_bytes)
    if mode == "zero1":
        return StateMemory(p, g, o / world_shard, 0)
    if mode == "zero2":
        return StateMemory(p, g / world_shard, o / world_shard, 0)
    if mode == "zero3":
        return StateMemory(p / world_shard, g / world_shard, o / world_shard,
                           max(root_params, 2 * max_unit_params) * storage_bytes)
    raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
