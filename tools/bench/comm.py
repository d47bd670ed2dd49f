"""Collective bandwidth of this cluster, to calibrate the cost model's link bandwidths.

    torchrun --nnodes N --nproc-per-node G -m tools.bench.comm \\
        [--sizes-mb 1,16,64] [--iters 20] [--warmup 5] [--groups world,intra,inter]

Times all_reduce, reduce_scatter_tensor and all_gather_into_tensor (float32; nccl on GPUs,
gloo on CPUs) over three kinds of group:

- world: every rank;
- intra: the ranks of one node (one group per node);
- inter: the same local rank on every node (one group per local rank).

Every rank benchmarks its own intra (inter) group at the same time as all the others, so the
node's NVLink (NICs) are shared the way a training step shares them: the inter number is one
GPU's share of its node's network bandwidth.

Each measurement: ``--warmup`` untimed calls, then ``--iters`` timed calls, each after a
world barrier; the time is the median, and the slowest group's median is reported.
Payload S (MiB = 2^20 bytes) is the all_reduce tensor, the reduce_scatter full input and the
all_gather full output (as in aurora.perf.comm_log and tools.scale.collectives).
algbw = S / time; busbw = algbw x 2(n-1)/n (all_reduce) or x (n-1)/n (reduce_scatter,
all_gather), the nccl-tests correction, which makes busbw comparable to link bandwidth
whatever the group size n. GB/s are 10^9 bytes/s; Gb/s are 10^9 bits/s (8x).

Which number to feed ``python -m tools.scale_model``: busbw of all_reduce at the largest size,
per GPU, which is the link bandwidth B of its ring formulas (tools/scale/collectives.py):
the intra row in GB/s as ``--intra-gbps`` (that flag takes gigaBYTES/s) and the inter row in
Gb/s as ``--inter-gbps`` (that flag takes gigaBITS/s). The last lines print both ready to
paste. Use sizes of 64 MiB or more on GPUs: smaller messages measure latency, not bandwidth.
"""

import argparse
import statistics
import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from aurora.config.schema import DistConfig
from aurora.distributed import DistEnv, init_distributed, shutdown
from aurora.distributed.mesh import REPLICATE, SHARD, node_mesh

COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather")
GROUPS = ("world", "intra", "inter")
MIB = 2**20


@dataclass(frozen=True)
class Row:
    group: str
    group_size: int
    collective: str
    nbytes: int
    seconds: float

    @property
    def algbw(self) -> float:
        """Bytes per second."""
        return self.nbytes / self.seconds

    @property
    def busbw(self) -> float:
        """Bytes per second, nccl-tests bus bandwidth."""
        n = self.group_size
        return self.algbw * (2 * (n - 1) / n if self.collective == "all_reduce" else (n - 1) / n)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="1,16,64",
                        help="comma-separated payload sizes in MiB (default 1,16,64)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations before timing")
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated subset of world,intra,inter")
    args = parser.parse_args(argv)
    try:
        args.sizes_mb = [float(s) for s in args.sizes_mb.split(",")]
    except ValueError:
        parser.error(f"--sizes-mb takes comma-separated numbers of MiB, e.g. 1,16,64; got {args.sizes_mb!r}")
    if any(s <= 0 for s in args.sizes_mb):
        parser.error("--sizes-mb values must be positive")
    args.groups = args.groups.split(",")
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"--groups: unknown {unknown}; choose from {','.join(GROUPS)}")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    return args


def build_groups(env: DistEnv, wanted: list[str]) -> tuple[dict, list[str]]:
    """This rank's group for each wanted kind with more than one rank, and why the others are
    skipped: the groups of aurora's node mesh, which HSDP and hierarchical sync use."""
    mesh = node_mesh(env)
    sizes = {"world": env.world_size, "intra": env.local_world_size, "inter": env.num_nodes}
    groups, skipped = {}, []
    for name in wanted:
        if sizes[name] < 2:
            skipped.append(f"{name}: a group of one rank ({env.num_nodes} node(s) x {env.local_world_size} "
                           f"rank(s) per node) moves no data")
        elif name == "world":
            groups[name] = dist.group.WORLD
        else:
            groups[name] = mesh.get_group(SHARD if name == "intra" else REPLICATE)
    return groups, skipped


def payload_numel(nbytes: int, n: int) -> int:
    """float32 elements closest below nbytes that split evenly over n ranks (at least one each)."""
    return max(n, nbytes // 4 // n * n)


def issue(collective: str, group, buf: torch.Tensor, part: torch.Tensor) -> None:
    """One collective; ``buf`` is the full payload, ``part`` one rank's share of it."""
    if collective == "all_reduce":
        dist.all_reduce(buf, group=group)
    elif collective == "reduce_scatter":
        dist.reduce_scatter_tensor(part, buf, group=group)
    else:
        dist.all_gather_into_tensor(buf, part, group=group)


def median_seconds(collective: str, group, numel: int, env: DistEnv, warmup: int, iters: int) -> float:
    buf = torch.zeros(numel, device=env.device)
    part = torch.zeros(numel // dist.get_world_size(group), device=env.device)
    times = []
    for i in range(warmup + iters):
        dist.barrier()
        sync(env)
        start = time.perf_counter()
        issue(collective, group, buf, part)
        sync(env)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(env: DistEnv) -> None:
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)


def measure(env: DistEnv, groups: dict, sizes_mb: list[float], warmup: int, iters: int) -> list[Row]:
    plan = [Row(group=name, group_size=dist.get_world_size(group), collective=c,
                nbytes=4 * payload_numel(round(size_mb * MIB), dist.get_world_size(group)), seconds=0.0)
            for name, group in groups.items() for size_mb in sizes_mb for c in COLLECTIVES]
    if not plan:
        return []
    local = [median_seconds(r.collective, groups[r.group], r.nbytes // 4, env, warmup, iters) for r in plan]
    # Each group timed itself; report the slowest group of each kind.
    slowest = torch.tensor(local, dtype=torch.float64, device=env.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return [replace(r, seconds=seconds) for r, seconds in zip(plan, slowest.tolist())]


def table(rows: list[Row]) -> str:
    header = (f"{'group':<6} {'ranks':>5} {'collective':<15} {'size MiB':>9} {'time ms':>10} "
              f"{'algbw GB/s':>11} {'busbw GB/s':>11} {'busbw Gb/s':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.group:<6} {r.group_size:>5} {r.collective:<15} {r.nbytes / MIB:>9.2f} {r.seconds * 1e3:>10.4g} "
                     f"{r.algbw / 1e9:>11.4g} {r.busbw / 1e9:>11.4g} {r.busbw * 8 / 1e9:>11.4g}")
    return "\n".join(lines)


def cost_model_inputs(rows: list[Row]) -> list[str]:
    """The tools.scale_model flags: --intra-gbps in GB/s, --inter-gbps in Gb/s (its units)."""
    lines = ["tools.scale_model inputs (busbw of the largest all_reduce, per GPU):"]
    for name, flag, bits in (("intra", "--intra-gbps", False), ("inter", "--inter-gbps", True)):
        candidates = [r for r in rows if r.group == name and r.collective == "all_reduce"]
        if candidates:
            r = max(candidates, key=lambda r: r.nbytes)
            value = r.busbw * 8 / 1e9 if bits else r.busbw / 1e9
            lines.append(f"  {flag} {value:.4g}   ({'Gb/s' if bits else 'GB/s'}; {name} group of {r.group_size} ranks, "
                         f"{r.nbytes / MIB:.2f} MiB: {r.busbw / 1e9:.4g} GB/s = {r.busbw * 8 / 1e9:.4g} Gb/s)")
        else:
            lines.append(f"  {flag}: not measured (no {name} group of 2+ ranks in this launch)")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = init_distributed(DistConfig())
    groups, skipped = build_groups(env, args.groups)
    rows = measure(env, groups, args.sizes_mb, args.warmup, args.iters)
    if env.is_main:
        print(f"collective bandwidth: backend {env.backend}, {env.world_size} rank(s) = {env.num_nodes} node(s) x "
              f"{env.local_world_size} per node, float32, median of {args.iters} after {args.warmup} warm-up, "
              f"slowest group of each kind")
        print(table(rows))
        for line in skipped:
            print(f"skipped {line}")
        print("\n".join(cost_model_inputs(rows)))
    dist.barrier()  # leave together: a gloo peer torn down while another still runs can abort it
    shutdown()


if __name__ == "__main__":
    main()
