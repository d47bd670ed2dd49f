"""Step time, exposed communication, memory and scaling efficiency of one mode at one world size.

Compute: a micro-batch takes FLOPs / (peak * mfu); activation checkpointing adds one forward
(a third of the FLOPs). Forward is a third of it, backward two thirds (the 6N count's 2:4 split).

Overlap: collectives issued during forward (FSDP/ZeRO-3 all-gathers) hide behind the forward
compute of the same micro-batch, those of backward (all-gathers, gradient reductions) behind
its backward compute, with a fraction `overlap` of that compute usable (NCCL kernels share the
GPU with the compute). One call per pass can never hide (the first all-gather of forward,
the last reduction of backward waits for the gradients it reduces). What runs after the
optimizer step (ZeRO-1/2's parameter all-gather, the hierarchical modes' cross-node average)
is not overlapped. Collectives of one pass run one after another, NVLink and network alike.

    exposed(pass) = max(comm(pass) - overlap * compute(pass), one call)   (0 without comm)
    step = accum * compute(micro-batch) + sum of exposed + update comm + outer comm / K
    efficiency = ideal / step, ideal = accum * compute(micro-batch) (perfect linear scaling)

Hierarchical modes report the mean step over K steps; their efficiency is the hardware's and
says nothing of the convergence cost of averaging parameters only every K steps.
"""

import math
from dataclasses import dataclass

from tools.scale.collectives import Links, collective_s, network_bytes
from aurora.perf.traffic import WHEN, Collective, StateMemory, group_shape, schedule, state_memory
from tools.scale.profile import ModelProfile


@dataclass(frozen=True)
class Cluster:
    gpus_per_node: int
    links: Links
    peak_flops: float
    """Dense peak FLOP/s per GPU at the compute precision."""
    mfu: float
    """Model FLOPs utilisation assumed for the compute."""
    overlap: float
    """Fraction of a pass's compute time that can hide that pass's collectives."""
    memory_bytes: float
    """Memory per GPU."""


@dataclass(frozen=True)
class Batch:
    micro_batch: int
    """Examples per GPU per micro-batch."""
    grad_accum: int
    """Micro-batches per optimizer step."""


@dataclass(frozen=True)
class Prediction:
    mode: str
    gpus: int
    nodes: int
    batch: Batch
    compute_s: float
    """Compute per optimizer step: the ideal step time."""
    comm_s: float
    """All communication per step, hidden or not."""
    exposed_s: float
    """Communication not hidden behind compute."""
    network_bytes: float
    """Bytes this GPU sends over the network per step (mean over K steps)."""
    state: StateMemory
    activation_bytes: float
    fits: bool
    """Whether state + activations fit in the GPU's memory."""

    @property
    def step_s(self) -> float:
        return self.compute_s + self.exposed_s

    @property
    def efficiency(self) -> float:
        return self.compute_s / self.step_s

    @property
    def memory_bytes(self) -> float:
        return self.state.total + self.activation_bytes


def plan_batch(profile: ModelProfile, world: int, micro_batch: int, grad_accum: int,
               global_batch_tokens: int | None) -> Batch:
    """The per-GPU batch: as given, or from a global batch of tokens (frames), split over the
    world in micro-batches of at most `micro_batch` examples."""
    if global_batch_tokens is None:
        return Batch(micro_batch, grad_accum)
    per_gpu = global_batch_tokens // profile.frames // world
    if per_gpu < 1:
        raise ValueError(f"a global batch of {global_batch_tokens} tokens is {global_batch_tokens // profile.frames} "
                         f"examples of {profile.frames} frames, less than one per GPU at {world} GPUs: raise "
                         f"--global-batch-tokens or lower --seq")
    micro = min(micro_batch, per_gpu)
    return Batch(micro, math.ceil(per_gpu / micro))


def _calls(c: Collective, profile: ModelProfile, element_bytes: int) -> int:
    e = profile.engine
    if c.issued_per == "unit":
        return profile.units + 1
    if c.issued_per == "ddp_bucket":
        return max(1, math.ceil(c.numel * element_bytes / (e.ddp.bucket_cap_mb * 2**20)))
    if c.issued_per == "ds_reduce_bucket":
        return max(1, math.ceil(c.numel / e.deepspeed.reduce_bucket_size))
    if c.issued_per == "ds_gather_bucket":
        return max(1, math.ceil(c.numel / e.deepspeed.allgather_bucket_size))
    return 1


def _exposed(comm: float, window: float, tail: float) -> float:
    return max(comm - window, tail) if comm > 0 else 0.0


def predict(profile: ModelProfile, mode: str, world: int, cluster: Cluster, batch: Batch, outer_every: int,
            storage_bytes: int) -> Prediction:
    """Predict one optimizer step of `profile` trained with `mode` on `world` GPUs.
    storage_bytes: bytes per stored parameter and gradient (4: aurora's fp32 parameters;
    2: 16-bit parameters with an fp32 master copy in the optimizer)."""
    g = cluster.gpus_per_node
    micro_s = profile.flops_per_example * batch.micro_batch / (cluster.peak_flops * cluster.mfu)
    recompute = 1 / 3 if profile.engine.activation_checkpointing else 0.0
    micro_s *= 1 + recompute
    forward_window = cluster.overlap * micro_s / (3 + 3 * recompute)
    backward_window = cluster.overlap * micro_s - forward_window

    total = {when: 0.0 for when in WHEN}
    one_call = dict(total)
    sent = 0.0
    per_step = {"forward": batch.grad_accum, "backward": batch.grad_accum, "outer": 1 / outer_every}
    for c in schedule(mode, profile.params, world, g, profile.root_params):
        element_bytes = profile.compute_bytes if c.dtype == "compute" else storage_bytes
        calls = _calls(c, profile, element_bytes)
        group = group_shape(c.group, world, g)
        call_s = collective_s(c.kind, c.numel * element_bytes / calls, group, cluster.links)
        total[c.when] += calls * call_s
        one_call[c.when] = max(one_call[c.when], call_s)
        sent += per_step.get(c.when, 1) * network_bytes(c.kind, c.numel * element_bytes, group)

    forward = _exposed(total["forward"], forward_window, one_call["forward"])
    backward = _exposed(total["backward"], backward_window, one_call["backward"])
    last_backward = _exposed(total["backward"] + total["backward_last"], backward_window,
                             max(one_call["backward"], one_call["backward_last"]))
    exposed = (batch.grad_accum * forward + (batch.grad_accum - 1) * backward + last_backward
               + total["update"] + total["outer"] / outer_every)
    comm = (batch.grad_accum * (total["forward"] + total["backward"]) + total["backward_last"] + total["update"]
            + total["outer"] / outer_every)

    state = state_memory(mode, profile.params, world, g, batch.grad_accum, storage_bytes, profile.compute_bytes,
                         profile.root_params, profile.max_unit_params)
    activations = batch.micro_batch * profile.activation_bytes
    return Prediction(mode=mode, gpus=world, nodes=group_shape("world", world, g).nodes, batch=batch,
                      compute_s=batch.grad_accum * micro_s, comm_s=comm, exposed_s=exposed,
                      network_bytes=sent, state=state, activation_bytes=activations,
                      fits=state.total + activations <= cluster.memory_bytes)
