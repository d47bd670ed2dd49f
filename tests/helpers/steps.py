"""A few optimizer steps of a recipe on fixed global batches, split over the ranks: the
reference every distributed test compares against a single process.

Every run, whatever its world size, engine or accumulation, sees the same global batch per
step: ``GLOBAL_BATCH`` examples generated from a fixed seed, each rank taking its contiguous
slice, cut into ``trainer.grad_accum_steps`` micro-batches. Token examples have unequal
lengths (padding beyond them holds random codes, which must not count). ``fixed_batch_steps`` runs on every
rank of a pool (or one process) and returns, on rank 0, the per-step losses and metrics, the
gradients of the first step and the final parameters (all as full tensors; an extra part's,
such as a GAN's discriminator, named ``<part>.<parameter>``), with every collective the rank
issued during the steps (``aurora.perf.comm_log``), tagged by step, and the ranges each step
opened (``tests.helpers.ranges``); None on other ranks.
"""

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed as dist

from aurora.config import load_config, peek_task
from aurora.data import build_loader
from aurora.distributed import barrier, init_distributed, shutdown
from aurora.perf.comm_log import CollectiveLog
from aurora.perf.spans import set_ranges
from aurora.tasks import get_task
from aurora.tasks.base import MAIN_PART
from aurora.train.loop import Trainer
from tests.helpers.ranges import RangeRecorder

GLOBAL_BATCH = 8
STEPS = 3


def engine_overrides(tmp_path: Path) -> dict[str, list[str]]:
    """The overrides of each engine the distributed tests compare, by short name.

    DeepSpeed's ZeRO-3 defaults keep a tiny model gathered: parameters under 1e5 elements
    persist, and up to 1e9 elements stay live from forward to backward, prefetched 2e8 at a
    time. A user JSON (written into ``tmp_path``) turns those off, so the tiny model is
    partitioned and re-gathered per module as a large model's layers are (and the JSON override
    path is exercised)."""
    zero3_json = tmp_path / "zero3.json"
    zero3_json.write_text(json.dumps({"zero_optimization": {
        "stage3_param_persistence_threshold": 0, "stage3_max_reuse_distance": 0,
        "stage3_max_live_parameters": 0, "stage3_prefetch_bucket_size": 0}}))
    return {
        "ddp": ["engine.name=ddp"],
        "fsdp": ["engine.name=fsdp"],
        "zero1": ["engine.name=deepspeed", "engine.deepspeed.zero_stage=1"],
        "zero2": ["engine.name=deepspeed", "engine.deepspeed.zero_stage=2"],
        "zero3": ["engine.name=deepspeed", "engine.deepspeed.zero_stage=3", f"engine.deepspeed.config={zero3_json}"],
    }


def global_batches(kind: str, cfg, step: int) -> dict:
    if kind == "pairs":  # real pairs (their reference log-probs are the shards'): batch ``step`` of the stream
        data = dataclasses.replace(cfg.data, batch_size=GLOBAL_BATCH, num_workers=0)
        return next(itertools.islice(iter(build_loader(data, kind, 0, 1, cfg.run.seed)), step, None))
    g = torch.Generator().manual_seed(1000 + step)
    texts = [f"example {i} of step {step}" for i in range(GLOBAL_BATCH)]
    keys = [f"k{step}_{i}" for i in range(GLOBAL_BATCH)]
    if kind == "tokens":
        frames = cfg.data.context_frames
        codes = torch.randint(0, cfg.model.codebook_size, (GLOBAL_BATCH, cfg.model.n_q, frames), generator=g)
        # Unequal lengths: ranks and micro-batches hold different numbers of valid frames, so only
        # weighting each micro-batch by its valid units gives the single process's mean.
        lengths = torch.randint(frames // 2, frames + 1, (GLOBAL_BATCH,), generator=g)
        return {"codes": codes, "lengths": lengths, "text": texts, "keys": keys}
    samples = round(cfg.data.segment_seconds * cfg.data.sample_rate)
    t = torch.arange(samples) / cfg.data.sample_rate
    freqs = 200 + 600 * torch.rand(GLOBAL_BATCH, 1, 1, generator=g)
    audio = 0.5 * torch.sin(2 * torch.pi * freqs * t) + 0.05 * torch.randn(GLOBAL_BATCH, 1, samples, generator=g)
    return {"audio": audio, "lengths": torch.full((GLOBAL_BATCH,), samples), "text": texts, "keys": keys}


def local_micro_batches(batch: dict, rank: int, world: int, accum: int) -> list[dict]:
    per_rank = GLOBAL_BATCH // world
    micro = per_rank // accum
    out = []
    for m in range(accum):
        lo = rank * per_rank + m * micro
        out.append(_examples(batch, lo, lo + micro))
    return out


def _examples(batch: dict, lo: int, hi: int) -> dict:
    """Examples [lo, hi) of a batch; of a pair batch (its B chosen sequences, then its B
    rejected ones), pairs [lo, hi) with both their sides."""
    examples = len(batch["keys"])
    out = {}
    for name, value in batch.items():
        if name == "skipped":
            continue
        if len(value) == 2 * examples:
            value = torch.cat([value[lo:hi], value[examples + lo: examples + hi]])
        else:
            value = value[lo:hi]
        out[name] = value
    return out


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone().cpu()


def full_params(part, prefix: str = "") -> dict[str, torch.Tensor]:
    """A part's (trained or frozen: ``Trainer.parts``, ``Trainer.frozen``) full parameters by its
    module's own names, each after ``prefix`` (a collective on sharding engines)."""
    return {prefix + name.removeprefix("module."): full(part.engine.read_full(p))
            for name, p in part.model.named_parameters()}


def loader_micro_batches(trainer: Trainer, cfg, rank: int, world: int, data_ranks: int) -> Callable[[int], list[dict]]:
    """Each step's micro-batches (a function of the step) from the recipe's own loader
    (``cfg.data``) as ``data_ranks`` ranks read it: rank ``rank`` of ``world`` takes the next batch
    of each of ranks ``rank * k .. rank * k + k - 1`` (``k = data_ranks / world``), as its ``k``
    micro-batches, or with ``grad_accum_steps=1`` as one batch of all their examples
    (``merged``). On ``data_ranks == world`` that is the Trainer's own loader."""
    k, uneven = divmod(data_ranks, world)
    accum = cfg.trainer.grad_accum_steps
    if uneven or accum not in (1, k):
        raise ValueError(f"{data_ranks} loader ranks on {world} ranks need grad_accum_steps 1 or {data_ranks // world}")
    if k == 1:
        streams = [iter(trainer.loader)]
    else:
        streams = [iter(build_loader(cfg.data, trainer.task.data_kind, r, data_ranks, cfg.run.seed))
                   for r in range(rank * k, rank * k + k)]
    if accum == 1:
        return lambda step: [merged([next(stream) for stream in streams])]
    return lambda step: [next(stream) for stream in streams]


def merged(batches: list[dict]) -> dict:
    """One batch of every example of ``batches``: tensors concatenated along the examples, each
    padded at the end of its last dimension to the longest (with zeros, which must not count:
    they are beyond every example's length)."""
    out = {}
    for name in batches[0]:
        if name == "skipped":
            continue
        values = [b[name] for b in batches]
        if isinstance(values[0], torch.Tensor):
            longest = max(v.shape[-1] for v in values)
            values = [torch.nn.functional.pad(v, (0, longest - v.shape[-1])) if v.ndim > 1 else v for v in values]
            out[name] = torch.cat(values)
        else:
            out[name] = [item for value in values for item in value]
    return out


def fixed_batch_steps(config: str, overrides: list[str], resume: Path | None = None,
                      steps: int = STEPS, data_ranks: int | None = None) -> dict | None:
    """``steps`` optimizer steps of ``config`` with ``overrides`` (from checkpoint ``resume``'s
    weights and optimizer state, if given), on ``global_batches`` or, with ``data_ranks``, on the
    recipe's real loader read as by that many ranks (``loader_micro_batches``). Raises if the
    replicas end with different weights. The steps run under a collective log (a
    TorchDispatchMode), under which torch.compile does not compile: compiled runs are tested
    through ``aurora train``."""
    task_cls = get_task(peek_task(config))
    cfg = load_config(task_cls.config_class, config, overrides)
    env = init_distributed(cfg.dist)
    trainer = Trainer(cfg, task_cls, env)
    if data_ranks is None:
        def next_micro_batches(step: int) -> list[dict]:
            batch = global_batches(task_cls.data_kind, cfg, step)
            return local_micro_batches(batch, env.rank, env.world_size, cfg.trainer.grad_accum_steps)
    else:
        next_micro_batches = loader_micro_batches(trainer, cfg, env.rank, env.world_size, data_ranks)
    if resume is not None:
        trainer.resume(Path(resume))
    first_grads, recorded = {}, set()

    def prefix(part) -> str:
        return "" if part.name == MAIN_PART else f"{part.name}."

    def recorder(part):
        real_step = part.engine.apply_step

        def recording_step(model, optimizer, update):
            # DeepSpeed keeps its reduced gradients in its own partitions: only the others are recorded.
            if part.name not in recorded and cfg.engine.name != "deepspeed":
                recorded.add(part.name)
                for name, p in part.model.named_parameters():
                    first_grads[prefix(part) + name.removeprefix("module.")] = full(p.grad)
            return real_step(model, optimizer, update)

        return recording_step

    for part in trainer.parts:
        part.engine.apply_step = recorder(part)
    losses, metrics, ranges = [], [], []
    with CollectiveLog() as comm:
        for step in range(steps):
            comm.mark_step(step + 1)
            recorder = RangeRecorder()
            set_ranges(recorder)
            try:
                metrics.append(trainer.train_step(iter(next_micro_batches(step))))
            finally:
                set_ranges(None)
            assert recorder.balanced, f"rank {env.rank}: step {step + 1} left ranges open"
            losses.append(metrics[-1]["loss"])
            ranges.append(recorder.opened)
    params = {name: p for part in trainer.parts for name, p in full_params(part, prefix(part)).items()}
    # Replicas must hold the same weights (DDP never re-syncs them after construction).
    checksum = torch.stack([p.double().sum() for p in params.values()])
    replicas = [torch.empty_like(checksum) for _ in range(env.world_size)]
    dist.all_gather(replicas, checksum)
    if not all(torch.equal(r, checksum) for r in replicas):
        raise AssertionError(f"rank {env.rank}: replicas diverged")
    barrier()
    shutdown()
    if not env.is_main:
        return None
    return {"losses": losses, "metrics": metrics, "grads": first_grads, "params": params,
            "comm": [r.to_dict() for r in comm.records], "ranges": ranges}


def assert_same_steps(ref: dict, other: dict, rtol: float = 2e-4, atol: float = 2e-5, reduced: bool = True) -> None:
    """Two ``fixed_batch_steps`` results agree: losses and final weights, and, with ``reduced``,
    every part's gradient norms and the first-step gradients where recorded (not for runs whose
    ranks step on node-local gradients, such as hierarchical sync)."""
    assert ref["losses"] == pytest.approx(other["losses"], rel=rtol, abs=atol)
    if reduced:
        for key in (k for k in ref["metrics"][0] if k.endswith("grad_norm")):
            norms = [[m[key] for m in run["metrics"]] for run in (ref, other)]
            assert norms[0] == pytest.approx(norms[1], rel=rtol, abs=atol), key
        assert not other["grads"] or ref["grads"].keys() == other["grads"].keys()
        for name in other["grads"]:
            torch.testing.assert_close(other["grads"][name], ref["grads"][name], rtol=rtol, atol=atol, msg=name)
    for name in ref["params"]:
        torch.testing.assert_close(other["params"][name], ref["params"][name], rtol=rtol, atol=atol, msg=name)
