"""Predict step time, communication, memory and scaling efficiency of data-parallel training
modes from 8 to thousands of GPUs, for an LM or codec training config.

    python -m tools.scale_model --model configs/lm/qwen2_0.5b.yaml --gpus 8,64,256,1024,4096 \\
        --gpus-per-node 8 --intra-gbps 900 --inter-gbps 400 [--json]

Units: --intra-gbps is in GB/s (gigaBYTES per second, as NVIDIA quotes NVLink: H100 SXM 900);
--inter-gbps is in Gb/s (gigaBITS per second, as NICs are sold: 400 = one 400G NIC per GPU =
50 GB/s). Both are per GPU. The formulas, the assumptions and a worked table are in
docs/scaling.md; the modes in aurora/perf/traffic.py.
"""

import argparse
import json
import sys

from aurora.config import ConfigError
from aurora.perf.mfu import peak_flops_for_name
from tools.scale.collectives import Links
from aurora.perf.traffic import MODES, collective_bytes_per_step
from tools.scale.predict import Cluster, Prediction, plan_batch, predict
from tools.scale.profile import ModelProfile, load_profile

__all__ = ["collective_bytes_per_step", "main"]

GB = 1e9
GIB = 2**30
REFERENCE_GPU = "NVIDIA H100 80GB HBM3"
"""The GPU whose peak (aurora.perf.mfu) is the default --peak-tflops."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of GPU counts, e.g. 8,64,256")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one GPU count, each >= 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, metavar="CONFIG",
                   help="training config(s): configs/lm/*.yaml or configs/codec/*.yaml")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override as on the training command line, e.g. engine.activation_checkpointing=true "
                        "(repeatable)")
    p.add_argument("--gpus", type=_int_list, default=[8, 64, 256, 1024, 4096],
                   help="comma-separated world sizes (default 8,64,256,1024,4096)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--intra-gbps", type=float, default=900.0,
                   help="intra-node bandwidth per GPU in GB/s = gigaBYTES/s, used as the collectives' bus "
                        "bandwidth (default 900, H100 SXM NVLink as NVIDIA quotes it, a bidirectional total; "
                        "a measured nccl-tests bus bandwidth is the better value). Note: bytes, unlike --inter-gbps")
    p.add_argument("--inter-gbps", type=float, default=400.0,
                   help="inter-node bandwidth per GPU in Gb/s = gigaBITS/s, each way (NIC line rate; default 400 = "
                        "one 400G NIC per GPU = 50 GB/s). Note: bits, unlike --intra-gbps")
    p.add_argument("--alpha-intra-us", type=float, default=3.0,
                   help="latency per intra-node ring step in µs (default 3; NCCL's tuning model: 2.5-5.7 on NVLink)")
    p.add_argument("--alpha-inter-us", type=float, default=7.0,
                   help="latency per inter-node ring step in µs (default 7; NCCL's tuning model: 2.5-6.6 on the network, "
                        "plus the switch hops)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"dense peak TFLOP/s per GPU (default: {REFERENCE_GPU}'s for the config's precision, "
                        f"fp32 counted as TF32, from aurora.perf.mfu)")
    p.add_argument("--mfu", type=float, default=0.45, help="model FLOPs utilisation of the compute (default 0.45)")
    p.add_argument("--overlap", type=float, default=0.8,
                   help="fraction of a pass's compute that can hide its communication (default 0.8)")
    p.add_argument("--seq", type=int, default=None,
                   help="frames per example: the LM's audio frames in context (default data.context_frames), the "
                        "codec's latent frames per clip (default data.segment_seconds x frame rate)")
    p.add_argument("--micro-batch", type=int, default=None, help="examples per GPU per micro-batch (default data.batch_size)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per step (default trainer.grad_accum_steps); exclusive with --global-batch-tokens")
    p.add_argument("--global-batch-tokens", type=int, default=None,
                   help="fix the global batch in tokens (frames, as --seq counts them) instead of the per-GPU batch "
                        "(strong scaling): each GPU gets its share in micro-batches of at most --micro-batch")
    p.add_argument("--outer-every", type=int, default=8,
                   help="hierarchical modes: steps between cross-node parameter averages, K (default 8)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--param-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="how parameters and gradients are stored: fp32 (aurora's engines: bf16 is autocast or "
                        "FSDP2's param_dtype) or bf16 with an fp32 master copy in the optimizer (default fp32)")
    p.add_argument("--gpu-mem-gib", type=float, default=80.0, help="memory per GPU in GiB, for the fits column (default 80)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = p.parse_args(argv)
    if args.grad_accum is not None and args.global_batch_tokens is not None:
        p.error("--grad-accum and --global-batch-tokens both set the accumulation: pass one of them")
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; modes: {', '.join(MODES)}")
    args.modes = modes
    for name in ("gpus_per_node", "outer_every", "seq", "micro_batch", "grad_accum"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    bad_worlds = [w for w in args.gpus if w > args.gpus_per_node and w % args.gpus_per_node]
    if bad_worlds:
        p.error(f"--gpus {bad_worlds} are not whole numbers of {args.gpus_per_node}-GPU nodes")
    return args


def cluster_for(args: argparse.Namespace, profile: ModelProfile) -> Cluster:
    links = Links(intra_bytes_per_s=args.intra_gbps * GB, inter_bytes_per_s=args.inter_gbps * GB / 8,
                  alpha_intra_s=args.alpha_intra_us * 1e-6, alpha_inter_s=args.alpha_inter_us * 1e-6)
    if args.peak_tflops is not None:
        peak = args.peak_tflops * 1e12
    else:
        precision = "bf16" if profile.compute_bytes == 2 else "tf32"
        peak = peak_flops_for_name(REFERENCE_GPU, precision)
    return Cluster(gpus_per_node=args.gpus_per_node, links=links, peak_flops=peak, mfu=args.mfu,
                   overlap=args.overlap, memory_bytes=args.gpu_mem_gib * GIB)


def predictions(args: argparse.Namespace, profile: ModelProfile, cluster: Cluster) -> tuple[list[Prediction], list[str]]:
    """Predictions for every mode and world size, and a note for each world the batch cannot fill."""
    storage_bytes = 4 if args.param_dtype == "fp32" else 2
    micro = args.micro_batch or profile.micro_batch
    accum = args.grad_accum or profile.grad_accum
    rows, notes = [], []
    for world in args.gpus:
        try:
            batch = plan_batch(profile, world, micro, accum, args.global_batch_tokens)
        except ValueError as e:
            notes.append(str(e))
            continue
        rows += [predict(profile, mode, world, cluster, batch, args.outer_every, storage_bytes) for mode in args.modes]
    return rows, notes


def header(args: argparse.Namespace, profile: ModelProfile, cluster: Cluster) -> list[str]:
    e = profile.engine
    return [
        f"== {profile.config} ({profile.task}): {profile.params / 1e6:,.1f}M params "
        f"({profile.root_params / 1e6:,.1f}M outside the {profile.units} shard units)",
        f"   {profile.frames} frames/example, {profile.flops_per_example / 1e12:,.4g} TFLOP/example (fwd+bwd), "
        f"activations {profile.activation_bytes / GIB:,.3g} GiB/example; precision {e.precision.value}, "
        f"params stored {args.param_dtype}, activation checkpointing {'on' if e.activation_checkpointing else 'off'}",
        f"   peak {cluster.peak_flops / 1e12:,.1f} TFLOP/s x MFU {cluster.mfu} ; overlap {cluster.overlap} ; "
        f"intra {args.intra_gbps:g} GB/s, inter {args.inter_gbps:g} Gb/s = {args.inter_gbps / 8:g} GB/s per GPU ; "
        f"alpha {args.alpha_intra_us:g}/{args.alpha_inter_us:g} µs ; {args.gpus_per_node} GPUs/node ; "
        f"K={args.outer_every}",
    ]


COLUMNS = ("mode", "gpus", "mb", "acc", "compute_ms", "comm_ms", "exposed_ms", "step_ms", "eff", "net_GB",
           "state_GiB", "act_GiB", "fits")


def table(rows: list[Prediction]) -> list[str]:
    lines = ["{:<17} {:>5} {:>3} {:>4} {:>10} {:>9} {:>10} {:>9} {:>5} {:>8} {:>9} {:>7} {:>4}".format(*COLUMNS)]
    for r in sorted(rows, key=lambda r: (r.mode, r.gpus)):
        lines.append(
            f"{r.mode:<17} {r.gpus:>5} {r.batch.micro_batch:>3} {r.batch.grad_accum:>4} {r.compute_s * 1e3:>10.4g} "
            f"{r.comm_s * 1e3:>9.4g} {r.exposed_s * 1e3:>10.4g} {r.step_s * 1e3:>9.4g} {r.efficiency:>5.3f} "
            f"{r.network_bytes / GB:>8.2f} {r.state.total / GIB:>9.2f} {r.activation_bytes / GIB:>7.2f} "
            f"{'yes' if r.fits else 'NO':>4}")
    return lines


def best_per_world(rows: list[Prediction]) -> list[str]:
    lines = []
    for world in sorted({r.gpus for r in rows}):
        fitting = [r for r in rows if r.gpus == world and r.fits]
        if not fitting:
            lines.append(f"   {world:>5} GPUs: no mode fits in memory")
            continue
        best = max(fitting, key=lambda r: r.efficiency)
        lines.append(f"   {world:>5} GPUs: {best.mode} (efficiency {best.efficiency:.3f})")
    return lines


def as_dict(r: Prediction) -> dict:
    return {"mode": r.mode, "gpus": r.gpus, "nodes": r.nodes, "micro_batch": r.batch.micro_batch,
            "grad_accum": r.batch.grad_accum, "compute_s": r.compute_s, "comm_s": r.comm_s, "exposed_s": r.exposed_s,
            "step_s": r.step_s, "efficiency": r.efficiency, "network_bytes": r.network_bytes,
            "memory_bytes": {"params": r.state.params, "grads": r.state.grads, "optimizer": r.state.optimizer,
                             "gathered": r.state.gathered, "activations": r.activation_bytes,
                             "total": r.memory_bytes},
            "fits": r.fits}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reports = []
    for config in args.model:
        try:
            profile = load_profile(config, args.override, args.seq)
        except ConfigError as e:
            sys.exit(f"scale_model: {e}")
        cluster = cluster_for(args, profile)
        rows, notes = predictions(args, profile, cluster)
        if args.json:
            reports.append({"config": config, "task": profile.task, "params": profile.params,
                            "frames_per_example": profile.frames, "flops_per_example": profile.flops_per_example,
                            "peak_flops": cluster.peak_flops, "mfu": cluster.mfu, "overlap": cluster.overlap,
                            "rows": [as_dict(r) for r in rows], "notes": notes})
            continue
        print("\n".join(header(args, profile, cluster) + table(rows)))
        print("   best fitting mode per world size:")
        print("\n".join(best_per_world(rows) + [f"   note: {n}" for n in notes]))
        print()
    if args.json:
        print(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
