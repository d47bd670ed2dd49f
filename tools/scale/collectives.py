"""Time of one collective: the alpha-beta model of ring and tree algorithms, made hierarchical.

For n ranks, S payload bytes (all_reduce: the tensor; reduce_scatter: the full input;
all_gather: the full output), link bandwidth B and per-hop latency alpha:

    ring all_reduce       2 (n-1)/n * S / B  +  2 (n-1) alpha
    ring reduce_scatter     (n-1)/n * S / B  +    (n-1) alpha      (all_gather the same)
    tree all_reduce latency                      2 ceil(log2 n) alpha

NCCL chooses among its algorithms per call from its own cost model; here an all-reduce takes
the smaller of the ring and tree latency terms with the ring's bandwidth term (for large
messages the two move data at about the same rate). reduce_scatter and all_gather are rings.

A group spanning several nodes (g of its ranks on each of m nodes) is costed as NCCL's
topology-aware schedule achieves it: the intra-node part over NVLink at the intra-node
bandwidth, the inter-node part as g parallel rings, one per local rank, each over its own
GPU's NIC, so each carries S/g at the inter-node bandwidth per GPU:

    all_reduce      2 (g-1)/g * S / B_intra  +  2 (m-1)/m * (S/g) / B_inter
    reduce_scatter    (g-1)/g * S / B_intra  +    (m-1)/m * (S/g) / B_inter  (all_gather the same)

plus the latency of each part. Bandwidths are per GPU and per direction, in bytes per second:
the "bus bandwidth" of nccl-tests.
"""

import math
from dataclasses import dataclass

from aurora.perf.traffic import Group


@dataclass(frozen=True)
class Links:
    intra_bytes_per_s: float
    """NVLink (or PCIe) bandwidth per GPU inside a node, bytes/s."""
    inter_bytes_per_s: float
    """Network bandwidth per GPU between nodes (its share of the node's NICs), bytes/s."""
    alpha_intra_s: float = 0.0
    """Latency per ring step inside a node, seconds."""
    alpha_inter_s: float = 0.0
    """Latency per ring step between nodes, seconds."""


def ring_all_reduce_s(nbytes: float, n: int, bytes_per_s: float, alpha_s: float = 0.0) -> float:
    """Ring all-reduce of nbytes over n ranks: 2 (n-1)/n * nbytes / bw + 2 (n-1) alpha."""
    return 2 * (n - 1) / n * nbytes / bytes_per_s + 2 * (n - 1) * alpha_s


def ring_reduce_scatter_s(nbytes: float, n: int, bytes_per_s: float, alpha_s: float = 0.0) -> float:
    """Ring reduce-scatter of an nbytes input (or all-gather of an nbytes output) over n ranks:
    (n-1)/n * nbytes / bw + (n-1) alpha."""
    return (n - 1) / n * nbytes / bytes_per_s + (n - 1) * alpha_s


ring_all_gather_s = ring_reduce_scatter_s


def all_reduce_latency_s(n: int, alpha_s: float) -> float:
    """The smaller of the ring's 2 (n-1) alpha and the tree's 2 ceil(log2 n) alpha."""
    if n <= 1:
        return 0.0
    return min(2 * (n - 1), 2 * math.ceil(math.log2(n))) * alpha_s


def network_bytes(kind: str, nbytes: float, group: Group) -> float:
    """Bytes one GPU sends over its NIC in one collective of `kind` with payload nbytes over
    `group` (the inter-node part of the schedule above; 0 inside one node)."""
    factor = 2 if kind == "all_reduce" else 1
    return factor * (group.nodes - 1) / group.nodes * nbytes / group.per_node


def collective_s(kind: str, nbytes: float, group: Group, links: Links) -> float:
    """Seconds for one collective of `kind` (all_reduce, reduce_scatter or all_gather) with
    payload nbytes over `group`: intra-node part, then inter-node part (module docstring)."""
    g, m = group.per_node, group.nodes
    if kind == "all_reduce":
        intra = 2 * (g - 1) / g * nbytes / links.intra_bytes_per_s + all_reduce_latency_s(g, links.alpha_intra_s)
        inter = 2 * (m - 1) / m * (nbytes / g) / links.inter_bytes_per_s + all_reduce_latency_s(m, links.alpha_inter_s)
        return intra + inter
    if kind in ("reduce_scatter", "all_gather"):
        intra = ring_reduce_scatter_s(nbytes, g, links.intra_bytes_per_s, links.alpha_intra_s)
        inter = ring_reduce_scatter_s(nbytes / g, m, links.inter_bytes_per_s, links.alpha_inter_s)
        return intra + inter
    raise ValueError(f"unknown collective {kind!r}: use all_reduce, reduce_scatter or all_gather")
