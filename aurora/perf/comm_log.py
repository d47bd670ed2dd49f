"""Record every collective this process issues, whoever issues it.

    with CollectiveLog() as log:
        for step, batch in enumerate(batches):
            log.mark_step(step)
            train_step(batch)
    print(log.summary(by_step=True))

What is seen: every c10d collective reaches the PyTorch dispatcher as an operator
(``c10d::allreduce_``, ``c10d::_allgather_base_``, ...), whether ``torch.distributed``'s
Python API issues it (FSDP2, DeepSpeed's ``deepspeed.comm``, user code) or C++ does (DDP's
reducer calls ``ProcessGroup::allreduce``, which dispatches ``c10d::allreduce_``). DTensor and
functional collectives issue ``_c10d_functional::*`` operators. A ``TorchDispatchMode`` sees all
of them, on any backend (gloo, nccl, ...), with the real arguments: tensors and the process
group itself, so the group's global ranks are exact.

Why not the profiler: its ``record_param_comms`` events (with group ranks) are only emitted
by ProcessGroupNCCL; on gloo the profiler shows the ``c10d::*`` operators with input shapes
but nothing that identifies the group. Why not patching ``torch.distributed`` functions: the
DDP reducer never calls them.

Cost: while the log is open every operator (not just collectives) passes through Python,
tens of microseconds each on a CPU (a 29 ms DDP step of an 8-layer MLP took 80 ms); fine for
tests and benchmarks, not for always-on training. Eager mode only (no ``torch.compile``d
regions). Not seen: DeepSpeed's shared-memory ``inference_all_reduce`` (CPU inference only;
its training collectives all go through torch.distributed).

Payload bytes recorded per kind (``CommRecord.bytes``), for the calling rank:

- all_reduce, broadcast, reduce: bytes of the tensor(s) reduced or broadcast.
- all_gather: bytes of the full gathered output (``group size x`` this rank's input).
- reduce_scatter: bytes of the full input (``group size x`` this rank's output).
- all_to_all: bytes of this rank's input.
- send, recv: bytes of the tensor(s) sent or received.
- barrier: 0.
- other (gather, scatter, and any operator of a collective namespace not known here): bytes
  of this rank's share (gather: its input; scatter: its output; unknown: all tensor
  arguments).

Coalesced variants (several tensors in one operator) are one record with the summed bytes.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from aurora.distributed.env import read_launch_env

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "all_to_all",
         "barrier", "send", "recv", "other")

# Operator namespaces whose operators are collectives (or helpers of them, listed below).
_NAMESPACES = ("c10d", "_c10d_functional", "_c10d_functional_autograd", "_dtensor")
_NOT_COLLECTIVES = {"_c10d_functional::wait_tensor", "_c10d_functional::_wrap_tensor_autograd"}


@dataclass(frozen=True)
class _Rule:
    kind: str
    payload: str | None  # the schema argument holding the payload; None: no payload
    times_group: bool = False  # payload is this rank's input of an all-gather without an output argument


_RULES = {
    "c10d::allreduce_": _Rule("all_reduce", "tensors"),
    "c10d::allreduce_coalesced_": _Rule("all_reduce", "tensors"),
    "c10d::_allgather_base_": _Rule("all_gather", "output_tensor"),
    "c10d::allgather_": _Rule("all_gather", "output_tensors"),
    "c10d::allgather_coalesced_": _Rule("all_gather", "output_lists"),
    "c10d::allgather_into_tensor_coalesced_": _Rule("all_gather", "outputs"),
    "c10d::_reduce_scatter_base_": _Rule("reduce_scatter", "input_tensor"),
    "c10d::reduce_scatter_": _Rule("reduce_scatter", "input_tensors"),
    "c10d::reduce_scatter_tensor_coalesced_": _Rule("reduce_scatter", "inputs"),
    "c10d::broadcast_": _Rule("broadcast", "tensors"),
    "c10d::reduce_": _Rule("reduce", "tensors"),
    "c10d::alltoall_": _Rule("all_to_all", "input_tensors"),
    "c10d::alltoall_base_": _Rule("all_to_all", "input"),
    "c10d::barrier": _Rule("barrier", None),
    "c10d::monitored_barrier_": _Rule("barrier", None),
    "c10d::send": _Rule("send", "tensors"),
    "c10d::recv_": _Rule("recv", "tensors"),
    "c10d::recv_any_source_": _Rule("recv", "tensors"),
    "c10d::gather_": _Rule("other", "input_tensors"),
    "c10d::scatter_": _Rule("other", "output_tensors"),
    "_c10d_functional::all_reduce": _Rule("all_reduce", "input"),
    "_c10d_functional::all_reduce_": _Rule("all_reduce", "input"),
    "_c10d_functional::all_reduce_coalesced": _Rule("all_reduce", "inputs"),
    "_c10d_functional::all_reduce_coalesced_": _Rule("all_reduce", "inputs"),
    "_c10d_functional::all_gather_into_tensor": _Rule("all_gather", "input", times_group=True),
    "_c10d_functional::all_gather_into_tensor_coalesced": _Rule("all_gather", "inputs", times_group=True),
    "_c10d_functional::all_gather_into_tensor_out": _Rule("all_gather", "out"),
    "_c10d_functional::reduce_scatter_tensor": _Rule("reduce_scatter", "input"),
    "_c10d_functional::reduce_scatter_tensor_coalesced": _Rule("reduce_scatter", "inputs"),
    "_c10d_functional::reduce_scatter_tensor_out": _Rule("reduce_scatter", "input"),
    "_c10d_functional::all_to_all_single": _Rule("all_to_all", "input"),
    "_c10d_functional::broadcast": _Rule("broadcast", "input"),
    "_c10d_functional::broadcast_": _Rule("broadcast", "input"),
    "_c10d_functional_autograd::all_gather_into_tensor": _Rule("all_gather", "input", times_group=True),
    "_c10d_functional_autograd::reduce_scatter_tensor": _Rule("reduce_scatter", "input"),
    "_c10d_functional_autograd::all_to_all_single": _Rule("all_to_all", "input"),
    "_dtensor::shard_dim_alltoall": _Rule("all_to_all", "input"),
}


@dataclass(frozen=True)
class CommRecord:
    """One collective issued by this process."""

    step: int | None
    """The step set by the last ``CollectiveLog.mark_step`` (None before the first)."""
    kind: str
    """One of ``KINDS``."""
    op: str
    """The dispatcher operator, e.g. ``c10d::allreduce_``: says which API variant was used."""
    bytes: int
    """Payload bytes as defined in the module docstring (all_gather: full output;
    reduce_scatter: full input)."""
    dtype: str
    """Payload element type, e.g. ``float32``; ``mixed`` for a coalesced call over several
    types; empty for a barrier."""
    ranks: tuple[int, ...]
    """Global ranks of the process group the collective ran on, in group-rank order."""

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {**asdict(self), "ranks": list(self.ranks)}

    @classmethod
    def from_dict(cls, fields: dict) -> "CommRecord":
        return cls(**{**fields, "ranks": tuple(fields["ranks"])})


def spans_nodes(ranks: Iterable[int], local_world_size: int) -> bool:
    """Whether a group with these global ranks has members on more than one node.

    Assumes node-major rank numbering (node n holds ranks ``n*local_world_size ...``), which
    torchrun and slurm both use.
    """
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1 (processes per node), got {local_world_size}")
    return len({r // local_world_size for r in ranks}) > 1


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _group_ranks(op: str, bound: dict) -> tuple[int, ...]:
    if "process_group" in bound:
        group = dist.ProcessGroup.unbox(bound["process_group"])
    elif "group_name" in bound:
        group = dist.distributed_c10d._resolve_process_group(bound["group_name"])
    else:
        return ()
    try:
        return tuple(dist.get_process_group_ranks(group))
    except KeyError as e:
        raise RuntimeError(f"CollectiveLog: {op} ran on a process group unknown to torch.distributed "
                           f"({group.group_name!r}); create groups with dist.new_group / DeviceMesh") from e


def _record(op: str, func, args: tuple, kwargs: dict, step: int | None) -> CommRecord:
    bound = dict(zip((a.name for a in func._schema.arguments), args))
    bound.update(kwargs)
    rule = _RULES.get(op, _Rule("other", None))
    if rule.payload is not None:
        payload = _tensors(bound[rule.payload])
    elif rule.kind == "other":
        payload = _tensors(list(bound.values()))
    else:
        payload = []
    nbytes = sum(t.numel() * t.element_size() for t in payload)
    ranks = _group_ranks(op, bound)
    if rule.times_group:
        nbytes *= len(ranks)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in payload}
    dtype = dtypes.pop() if len(dtypes) == 1 else ("mixed" if dtypes else "")
    return CommRecord(step=step, kind=rule.kind, op=op, bytes=nbytes, dtype=dtype, ranks=ranks)


class CollectiveLog(TorchDispatchMode):
    """Inside ``with CollectiveLog() as log:`` every collective of this process is appended to
    ``log.records`` (a list of ``CommRecord``), from any thread that inherits the mode (the
    autograd engine's threads do)."""

    def __init__(self):
        super().__init__()
        self.records: list[CommRecord] = []
        self.step: int | None = None

    def mark_step(self, step: int) -> None:
        """Tag the collectives issued from now on with ``step``."""
        self.step = step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(issubclass(t, DTensor) for t in types):
            # DTensor may redistribute (all-reduce, all-gather...) while it handles an op, and a
            # mode is switched off during its own handler, so calling func here would hide those
            # collectives; handing the op back lets DTensor run it with this mode still on.
            return NotImplemented
        if func.namespace in _NAMESPACES:
            op = func.name()
            if op not in _NOT_COLLECTIVES:
                self.records.append(_record(op, func, args, kwargs, self.step))
        return func(*args, **kwargs)

    def summary(self, local_world_size: int | None = None, by_step: bool = False) -> dict:
        """Bytes and counts per kind: ``{kind: {"count", "bytes", "intra_node_bytes",
        "inter_node_bytes"}}``, or ``{step: {kind: {...}}}`` with ``by_step``.

        A collective counts as inter-node when its group spans nodes (``spans_nodes``), with
        ``local_world_size`` processes per node (default: this launch's LOCAL_WORLD_SIZE).
        """
        if local_world_size is None:
            local_world_size = read_launch_env()["local_world_size"]
        out: dict = {}
        for r in self.records:
            table = out.setdefault(r.step, {}) if by_step else out
            totals = table.setdefault(r.kind, {"count": 0, "bytes": 0, "intra_node_bytes": 0, "inter_node_bytes": 0})
            totals["count"] += 1
            totals["bytes"] += r.bytes
            totals["inter_node_bytes" if spans_nodes(r.ranks, local_world_size) else "intra_node_bytes"] += r.bytes
        return out
