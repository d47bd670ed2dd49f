"""Step time of each engine against ddp: same model, same batches, same world size, one launch.

    torchrun --nproc-per-node 2 -m tools.bench.engines [--config configs/lm/tiny.yaml]
        [--steps 10] [--blocks 3] [--warmup 3] [--engines ddp,fsdp,zero1,zero2,zero3]
        [--variants ac,compile] [key=value ...]

Every row is a real aurora ``Trainer`` (engine, optimizer, LR schedule, ``train_step``) built
from the same config, overrides and seed, so every row starts from the same weights. All rows
live in the same processes at once: DDP, FSDP2 and DeepSpeed share the default process group
(each DeepSpeed engine adds groups of its own), which the last column checks (below).
``--variants`` adds ddp rows with ``engine.activation_checkpointing=true`` (ac) or
``engine.compile=true`` (compile). ``key=value`` overrides apply to every row (a row's own
engine settings win over them).

Batches are synthetic and fixed: ``--steps`` global batches of ``data.batch_size`` x world
examples drawn once from a seed, each rank taking its contiguous slice (as
tests/helpers/steps.py does), fed to ``train_step`` as an iterator, so no loader
runs. Every row sees the same batches in the same order.

Timing: ``--warmup`` untimed steps per row (compilation, lazily built buffers), then
``--blocks`` rounds in which every row runs ``--steps`` steps in turn (ddp, fsdp, ..., then
again), so a slow spell of this noisy machine hits every row alike. A step is timed on rank 0
from the call to ``train_step`` until it returns (the step's collectives keep the ranks in
step). The table gives each row's median over all its timed steps, its ratio to ddp's
median, and the range of its per-block medians: how much the machine's noise moved it.

The last column is the largest difference between a row's loss and ddp's at the same step:
the engines compute the same sums split differently, so it stays at float rounding (about
1e-5) unless the rows disturbed one another.
"""

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from aurora.config import load_config, peek_task
from aurora.distributed import barrier, init_distributed, shutdown
from aurora.tasks import get_task
from aurora.train.loop import Trainer
from data_prep.synth_tokens import write_token_shards

ENGINES = {
    "ddp": ["engine.name=ddp"],
    "fsdp": ["engine.name=fsdp"],
    **{f"zero{s}": ["engine.name=deepspeed", f"engine.deepspeed.zero_stage={s}"] for s in (1, 2, 3)},
}
VARIANTS = {"ac": ["engine.activation_checkpointing=true"], "compile": ["engine.compile=true"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/lm/tiny.yaml", help="an LM recipe config")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row and block")
    parser.add_argument("--blocks", type=int, default=3, help="rounds over all rows")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}; ddp is always run")
    parser.add_argument("--variants", default="", help=f"extra ddp rows: subset of {','.join(VARIANTS)}")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.engines) - set(ENGINES)) + sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown engines/variants {unknown}; engines: {','.join(ENGINES)}, variants: {','.join(VARIANTS)}")
    if min(args.steps, args.blocks) < 1 or args.warmup < 0:
        parser.error("--steps and --blocks must be >= 1, --warmup >= 0")
    return args


def row_overrides(engines: list[str], variants: list[str]) -> dict[str, list[str]]:
    """Row name -> its config overrides; ddp first, it is the baseline."""
    out = {"ddp": ENGINES["ddp"]}
    out.update({name: ENGINES[name] for name in engines if name != "ddp"})
    out.update({f"ddp+{v}": ENGINES["ddp"] + VARIANTS[v] for v in variants})
    return out


def token_batches(cfg, count: int, rank: int, world: int) -> list[list[dict]]:
    """``count`` steps of this rank's micro-batches: each step one global batch of
    ``data.batch_size * world * grad_accum_steps`` examples, cut by rank, then by micro-batch."""
    accum, micro = cfg.trainer.grad_accum_steps, cfg.data.batch_size
    size, frames = micro * world * accum, cfg.data.context_frames
    steps = []
    for step in range(count):
        g = torch.Generator().manual_seed(1000 + step)
        codes = torch.randint(0, cfg.model.codebook_size, (size, cfg.model.n_q, frames), generator=g)
        lo = rank * micro * accum
        steps.append([{"codes": codes[lo + m * micro: lo + (m + 1) * micro], "lengths": torch.full((micro,), frames),
                       "text": [f"example {lo + m * micro + i} of step {step}" for i in range(micro)],
                       "keys": [f"k{step}_{lo + m * micro + i}" for i in range(micro)]} for m in range(accum)])
    return steps


def run_steps(trainer: Trainer, steps: list[list[dict]]) -> tuple[list[float], list[float]]:
    """Seconds and loss of each step."""
    times, losses = [], []
    for micro in steps:
        started = time.perf_counter()
        metrics = trainer.train_step(iter(micro))
        times.append(time.perf_counter() - started)
        losses.append(metrics["loss"])
    return times, losses


@contextlib.contextmanager
def shared_workspace(env) -> Iterator[Path]:
    """A fresh directory made by rank 0, the same path on every rank (one machine). On the way
    out the ranks leave together (a gloo peer torn down while another still runs can abort it),
    the directory goes and the process group is shut down."""
    path = [tempfile.mkdtemp(prefix="aurora-bench-") if env.is_main else None]
    dist.broadcast_object_list(path, src=0)
    try:
        yield Path(path[0])
        barrier()
    finally:
        if env.is_main:
            shutil.rmtree(path[0], ignore_errors=True)
        shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    task_cls = get_task(peek_task(args.config))
    if task_cls.data_kind != "tokens":
        raise SystemExit(f"{args.config}: this benchmark makes token batches; give an LM recipe config")
    table = row_overrides(args.engines, args.variants)
    total = args.warmup + args.blocks * args.steps
    base = ["trainer.progress_bar=false", "data.num_workers=0", f"trainer.max_steps={total}", *args.overrides]
    cfg = load_config(task_cls.config_class, args.config, base)
    env = init_distributed(cfg.dist)
    with shared_workspace(env) as tmp:
        if env.is_main:  # only for the Trainer's loader, which is never iterated
            write_token_shards(tmp / "tokens", num_clips=2 * env.world_size, per_shard=2, n_q=cfg.model.n_q,
                               codebook_size=cfg.model.codebook_size)
        barrier()
        runs = {}
        for name, overrides in table.items():
            row_cfg = load_config(task_cls.config_class, args.config,
                                  base + [f"run.dir={tmp / name}", f"data.shards={tmp / 'tokens'}", *overrides])
            runs[name] = Trainer(row_cfg, task_cls, env)
        steps = token_batches(cfg, args.steps, env.rank, env.world_size)
        times = {name: [] for name in table}
        losses = {name: [] for name in table}
        for name, trainer in runs.items():
            losses[name] += run_steps(trainer, [steps[i % len(steps)] for i in range(args.warmup)])[1]
        for _ in range(args.blocks):
            for name, trainer in runs.items():
                barrier()
                block_times, block_losses = run_steps(trainer, steps)
                times[name].append(block_times)
                losses[name] += block_losses
        ddp = runs["ddp"]
        params = sum(p.numel() for p in ddp.engine.unwrap(ddp.model).parameters())
    if not env.is_main:
        return
    print(f"engines: world {env.world_size} ({env.backend}, {env.device.type}), {args.config}, "
          f"{args.blocks} blocks x {args.steps} steps per row after {args.warmup} warm-up steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) per rank")
    print(f"model: {params / 1e6:.2f} M parameters; per rank and step {cfg.trainer.grad_accum_steps} x "
          f"{cfg.data.batch_size} examples of {cfg.data.context_frames} frames; overrides: {' '.join(args.overrides) or 'none'}")
    medians = {name: statistics.median(t for block in blocks for t in block) for name, blocks in times.items()}
    print(f"{'row':<14} {'ms/step':>9} {'vs ddp':>7} {'block medians (ms)':>19} {'max |loss - ddp|':>17}")
    for name, blocks in times.items():
        spread = [statistics.median(block) * 1e3 for block in blocks]
        drift = max(abs(a - b) for a, b in zip(losses[name], losses["ddp"]))
        print(f"{name:<14} {medians[name] * 1e3:9.2f} {medians[name] / medians['ddp']:7.3f} "
              f"{f'{min(spread):.1f}-{max(spread):.1f}':>19} {drift:17.2e}")


if __name__ == "__main__":
    main()
