"""The training loop: the same for every recipe and every engine.

One optimizer step = ``grad_accum_steps`` micro-batches, fetched first (one small all-reduce
sums their valid units over ranks, so each micro-batch's loss is weighted by its share of the
step: batches of any size count fairly), then, for each part the recipe trains (its main model,
preceded by extra parts with optimizers of their own, such as a GAN's discriminator): its
gradients cleared → forward/backward of each micro-batch (gradients synchronised on the last
only) → one all-reduce that tells every rank whether any rank saw a non-finite loss and
whether any rank was asked to stop (preemption), and carries every logged number → the
part's engine clips (by value, then by global norm) and steps, unless a loss or the gradient
norm is non-finite (then every rank skips the update) → its LR schedule. Then the cross-node
parameter average every K steps (``sync.mode=hierarchical``) → the recipe's maintenance between
steps (``Task.after_step``: dead codes, EMA targets) → checkpoint → evaluation → metrics.

Frozen parts (``Task.frozen_parts``: a teacher, a reference, an EMA target) get an engine of their
own but no optimizer; the recipe calls them beside the trained parts. One that changes (an EMA
target) is saved in every checkpoint under ``parts/<name>``; one that never changes is loaded from
its source at every start, and a checkpoint records the id of its weights, which a resume checks.

What keeps a long job alive lives beside the loop, one module each: ``nonfatal`` (work whose
failure must not stop training), ``checkpoint`` (atomic, async, full disks), ``preemption``
(signals), ``watchdog`` (hangs), ``stops`` (exit codes), ``faults`` (test hooks); and what measures
it: ``profiling`` (the ``profile.*`` window), with the spans and the step clock of ``aurora.perf``
(``time/*`` in metrics.jsonl: the step's wall time by phase, and its spread over ranks).
"""

import dataclasses
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from aurora.config import TrainConfig, to_yaml
from aurora.config.load import saved_config
from aurora.config.schema import OptimConfig, OptimizerName, SyncMode
from aurora.data import batch_to_device, build_loader
from aurora.distributed import DistEnv, all_reduce_named, all_reduce_sum, barrier, flight_recorder
from aurora.distributed.hierarchical import HierarchicalSync
from aurora.distributed.mesh import REPLICATE, SHARD
from aurora.engines import Engine, build_engine
from aurora.engines.capabilities import check_resume
from aurora.tasks.base import MAIN_PART, MODEL_FLOPS, FrozenPartSpec, PartModels, PartSpec, Task
from aurora.train import faults
from aurora.exported import TRUST_FIELD, load_weights
from aurora.runs import engine_files_dir, step_dirname, weights_id
from aurora.train.checkpoint import Checkpointer
from aurora.train.metrics import STEP_TIMES, MetricsLogger
from aurora.perf.mfu import mfu, peak_flops
from aurora.perf.spans import set_clock, span
from aurora.perf.step_clock import BACKWARD, CHECKPOINT, COMM, DATA, FORWARD, OPTIMIZER, StepClock
from aurora.train.nonfatal import NonFatal
from aurora.train.preemption import REQUEUE_EXIT_CODE, PreemptionFlag
from aurora.train.profiling import ProfileWindow
from aurora.train.rng import rng_state, seed_everything, set_rng_state
from aurora.train.schedule import build_scheduler
from aurora.train.stops import DIVERGED_EXIT_CODE, RunStopped
from aurora.train.watchdog import HangWatchdog


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; matrices decay, vectors (norms, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if cfg.name == OptimizerName.sgd:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


PADDED_UNITS = "_padded_units"
VALID_UNITS = "_valid_units"

# Fields of a part's one all-reduce per step (``all_reduce_named``): its loss, whether any rank's
# loss was non-finite, whether any rank was asked to stop (main part), the recipe's metrics and
# the work counted for throughput (main part).
_LOSS, _NONFINITE, _STOP, _METRIC, _WORK = "loss", "nonfinite", "stop", "metric/", "work/"


def _padded_units(batch: dict) -> float:
    """Samples (audio) or frames (tokens, latents) of a batch, padding included."""
    padded = next(batch[key] for key in ("audio", "codes", "latents") if key in batch)
    return float(len(batch["lengths"]) * padded.shape[-1])


KEYS_DIR = "sample_keys"


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop the JSON lines of a log written after the checkpoint we resume from (they come
    again) and the lines that do not parse (one a kill cut short). The log is replaced whole
    (temporary file, then rename), so a crash here leaves the old one."""
    if not path.is_file():
        return
    kept, torn = [], 0
    for line in path.read_bytes().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, LookupError, TypeError):  # not JSON, not UTF-8, no step, not a number
            torn += line.strip() != b""
    if torn:
        print(f"aurora: dropped {torn} unreadable line(s) of {path} (a write cut short)", file=sys.stderr, flush=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(line + b"\n" for line in kept))
    os.replace(tmp, path)


@dataclasses.dataclass
class TrainedPart:
    """One model of the step with everything that updates it."""
    name: str
    engine: Engine
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    outer_sync: HierarchicalSync | None

    def prefixed(self, metric: str) -> str:
        """The main model's metrics keep their plain names; other parts' carry theirs."""
        return metric if self.name == MAIN_PART else f"{self.name}/{metric}"


@dataclasses.dataclass
class FrozenPart:
    """A model the step uses but does not train."""
    name: str
    engine: Engine
    model: torch.nn.Module
    updated: bool
    """The recipe changes it after steps (an EMA target): checkpoints save it."""
    source: str
    """Where its weights came from, for messages."""
    weights_id: str | None
    """The id of its weights as loaded, when they never change (checkpoints record it)."""


def _engine_files(checkpoint: Path, part: str) -> Path:
    """The folder of ``checkpoint`` where part ``part``'s engine keeps its own files."""
    return engine_files_dir(checkpoint, None if part == MAIN_PART else part)


def _check_parts(cfg: TrainConfig, trained: list[PartSpec], frozen: list[FrozenPartSpec]) -> None:
    """Refuse (ValueError, one line) parts a recipe declared that the loop cannot keep apart or in step."""
    names = [spec.name for spec in [*trained, *frozen]]
    if len(set(names)) != len(names):
        raise ValueError(f"the recipe's parts must have distinct names, got {names}: rename the extra or frozen ones")
    updated = [spec.name for spec in frozen if spec.updated]
    if updated and cfg.sync.mode == SyncMode.hierarchical:
        raise ValueError(f"frozen part '{updated[0]}' changes after every step, and under sync.mode=hierarchical "
                         f"each node trains apart between outer steps, so its copies would drift apart: use "
                         f"sync.mode=flat")


class Trainer:
    def __init__(self, cfg: TrainConfig, task_cls: type[Task], env: DistEnv):
        self.cfg = cfg
        self.env = env
        self.run_dir = Path(cfg.run.dir)
        self.window = ProfileWindow(cfg.profile, env, self.run_dir)  # first: it refuses a bad profile.*
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        barrier()
        flight_recorder.dump_under(self.run_dir)
        self.clock = StepClock(env.device)
        self._step_started = 0.0
        self._step_work: dict[str, float] = {}
        """The step's work totals over ranks (throughput), kept for the rates of the whole step."""

        seed_everything(cfg.run.seed)  # the same initial weights on every rank
        self.task = task_cls(cfg, env)
        raw_model = self.task.build_model()
        main = PartSpec(MAIN_PART, raw_model, self.task.shard_units(raw_model), cfg.optim, cfg.trainer.clip_grad_norm)
        trained = [*self.task.extra_parts(), main]
        frozen = self.task.frozen_parts(raw_model)
        _check_parts(cfg, trained, frozen)
        self.parts = [self._prepare(spec) for spec in trained]
        """Every model the step trains, in update order; the main model is last."""
        self.frozen = [self._prepare_frozen(spec) for spec in frozen]
        """Every model the step uses without training it."""
        main_part = self.parts[-1]
        self.engine, self.model, self.optimizer = main_part.engine, main_part.model, main_part.optimizer
        self.scheduler, self.outer_sync = main_part.scheduler, main_part.outer_sync
        every = [*self.parts, *self.frozen]
        self.models = PartModels({part.name: part.model for part in every}, {part.name: part.engine for part in every})
        self.loader = build_loader(cfg.data, self.task.data_kind, env.rank, env.world_size, cfg.run.seed,
                                   pin_memory=env.device.type == "cuda")
        self.nonfatal = NonFatal(env.rank)
        self.checkpointer = Checkpointer(self.run_dir, env, self.nonfatal, cfg.trainer.keep_last_n,
                                         cfg.trainer.async_checkpoint)
        self.preemption = PreemptionFlag()
        self.peak_flops = peak_flops(env.device, cfg.engine.precision.value, task_cls.convolutional)
        """Dense peak FLOP/s of one device (None on a CPU or an unknown GPU: no MFU then)."""
        self.step = 0
        self.skipped_steps = 0
        self.bad_streak = 0
        """Consecutive non-finite steps up to now."""
        self.stop_requested = False
        """Some rank was asked to stop (agreed by the step's all-reduce)."""
        self.skipped_samples: Counter = Counter()

    def _prepare(self, spec: PartSpec) -> TrainedPart:
        """Wrap one part with an engine of its own (its own clip), optimizer, LR schedule and
        cross-node sync."""
        cfg = self.cfg
        part_cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, clip_grad_norm=spec.clip_grad_norm))
        engine = build_engine(part_cfg, self.env)
        model, optimizer = engine.prepare(spec.model, spec.shard_units, lambda m: build_optimizer(m, spec.optim))
        outer_sync = None
        if cfg.sync.mode == SyncMode.hierarchical:
            mesh = engine.mesh
            replicas = None if engine.shards_parameters else mesh.get_group(SHARD)
            outer_sync = HierarchicalSync(cfg.sync, mesh.get_group(REPLICATE), replicas, model, optimizer)
        scheduler = build_scheduler(optimizer, spec.optim, cfg.trainer.max_steps)
        return TrainedPart(spec.name, engine, model, optimizer, scheduler, outer_sync)

    def _prepare_frozen(self, spec: FrozenPartSpec) -> FrozenPart:
        """Load a frozen part from its source (if it has one), take the id of weights that never
        change, and wrap it with an engine of its own, without an optimizer."""
        if spec.source is not None:
            load_weights(spec.model, spec.source, trust=self.cfg.run.trust_checkpoint, part=spec.source_part,
                         what=f"the source of frozen part '{spec.name}'", how_to_trust=TRUST_FIELD)
        ident = None if spec.updated else weights_id(spec.model)
        engine = build_engine(self.cfg, self.env)
        model, _ = engine.prepare(spec.model, spec.shard_units, None)
        source = "the recipe" if spec.source is None else str(spec.source)
        if spec.source_part is not None:
            source += f" (part {spec.source_part})"
        return FrozenPart(spec.name, engine, model, spec.updated, source, ident)

    # -- checkpoint state -------------------------------------------------------------------
    def _app_state(self) -> dict:
        state = {"trainer": {"step": self.step, "skipped_steps": self.skipped_steps,
                             "scheduler": self.scheduler.state_dict()}}
        for part in self.parts:
            model_state, optim_state = part.engine.state_dict(part.model, part.optimizer)
            if part.name == MAIN_PART:
                state.update(model=model_state, optim=optim_state)
            else:
                state.setdefault("parts", {})[part.name] = {"model": model_state, "optim": optim_state,
                                                            "scheduler": part.scheduler.state_dict()}
        for part in self.frozen:
            if part.updated:
                state.setdefault("parts", {})[part.name] = {"model": part.engine.state_dict(part.model, None)[0]}
        return state

    def _saved_parts(self) -> list[TrainedPart | FrozenPart]:
        """The parts a checkpoint holds: every trained one and the frozen ones that change."""
        return [*self.parts, *(part for part in self.frozen if part.updated)]

    def _save_native(self, path: Path) -> None:
        for part in self._saved_parts():
            part.engine.save_native(part.model, _engine_files(path, part.name))

    def save(self) -> bool:
        """Checkpoint this step on every rank; False if the save failed and was skipped."""
        rank_state = {"rng": rng_state(), "task": self.task.state_dict(), "outer_sync": {}}
        for part in self.parts:
            if part.outer_sync is None:
                continue
            if not part.outer_sync.due(self.step):
                # Nodes hold different weights between outer steps; a checkpoint holds one copy.
                part.outer_sync.outer_step()
            rank_state["outer_sync"][part.name] = part.outer_sync.state_dict()
        shared = [None] * self.env.world_size
        dist.all_gather_object(shared, {"data": self.loader.state_dict(), "skipped_samples": dict(self.skipped_samples)})
        frozen_ids = {part.name: part.weights_id for part in self.frozen if not part.updated}
        return self.checkpointer.save(self.step, self._app_state(), rank_state,
                                      {"ranks": shared, "frozen_ids": frozen_ids}, native=self._save_native)

    def resume(self, path: Path) -> None:
        check_resume(self.cfg.engine, self.checkpointer.saved_world(path), self.env.world_size, path)
        app_state = self._app_state()
        rank_state, shared = self.checkpointer.load(path, app_state)
        self._check_frozen_ids(path, shared.get("frozen_ids", {}))
        for part in self.parts:
            state = app_state if part.name == MAIN_PART else app_state["parts"][part.name]
            part.engine.load_state_dict(part.model, part.optimizer, state["model"], state["optim"])
            part.engine.load_native(part.model, _engine_files(path, part.name))
            if part.name != MAIN_PART:
                part.scheduler.load_state_dict(state["scheduler"])
            if part.outer_sync is not None and part.name in rank_state["outer_sync"]:
                part.outer_sync.load_state_dict(rank_state["outer_sync"][part.name])
        for part in self.frozen:
            if part.updated:
                part.engine.load_state_dict(part.model, None, app_state["parts"][part.name]["model"], {})
                part.engine.load_native(part.model, _engine_files(path, part.name))
        self.scheduler.load_state_dict(app_state["trainer"]["scheduler"])
        self.step = app_state["trainer"]["step"]
        self.skipped_steps = app_state["trainer"]["skipped_steps"]
        self.loader.load_state_dict([r["data"] for r in shared["ranks"]])
        self.task.load_state_dict(rank_state["task"])
        saved_world = len(shared["ranks"])
        if saved_world == self.env.world_size:
            self.skipped_samples = Counter(shared["ranks"][self.env.rank]["skipped_samples"])
            set_rng_state(rank_state["rng"])
            return
        # Elastic: the data stream re-split the rest of the epoch; totals stay on rank 0, and
        # each rank draws fresh random numbers (no rank's saved stream fits the new layout).
        self.skipped_samples = Counter()
        if self.env.is_main:
            for r in shared["ranks"]:
                self.skipped_samples.update(r["skipped_samples"])
            print(f"elastic resume: {saved_world} ranks saved {path.name}, {self.env.world_size} "
                  f"continue it; the rest of the data epoch is re-split over them", flush=True)
        seed_everything(self.cfg.run.seed + 1_000_003 * (self.step + 1) + self.env.rank)

    def _check_frozen_ids(self, path: Path, saved: dict[str, str]) -> None:
        """Refuse to resume with a frozen part that never changes loaded with other weights than
        the ones checkpoint ``path`` was trained with."""
        for part in self.frozen:
            if part.updated or saved.get(part.name) == part.weights_id:
                continue
            raise RuntimeError(f"{path} was trained with frozen part '{part.name}' at weights "
                               f"{saved.get(part.name, '(no id recorded)')}, but this job loaded {part.weights_id} "
                               f"from {part.source}: its source changed since the run started. Put the original "
                               f"weights back to resume, or train with the new ones in a new run (another run.dir)")

    # -- one optimizer step -------------------------------------------------------------------
    def train_step(self, data_iter) -> dict[str, float]:
        cfg = self.cfg.trainer
        accum = cfg.grad_accum_steps
        set_clock(self.clock)
        self.clock.start()
        started = self._step_started = time.perf_counter()
        batches, units, items = [], [], Counter()
        with span("data", DATA):
            for _ in range(accum):
                batch = next(data_iter)
                self.skipped_samples.update(batch.pop("skipped", {}))
                items.update(self.task.batch_items(batch))
                items[PADDED_UNITS] += _padded_units(batch)
                items[VALID_UNITS] += float(batch["lengths"].sum())
                units.append(self.task.loss_units(batch))
                batches.append(batch)
            data_wait = time.perf_counter() - started
            if cfg.record_sample_keys:
                self._record_keys([k for b in batches for k in b["keys"]])
            batches = [batch_to_device(batch, self.env.device) for batch in batches]
        # Batches differ in size (dynamic batching, padding): weight each micro-batch's mean loss
        # by its valid units (samples, frames, pairs: ``Task.loss_units``), so the step's gradient
        # is the mean over every valid unit of every rank, however the units fell into batches.
        with span("comm/units_all_reduce", COMM):
            total_units = all_reduce_sum(torch.tensor(sum(units), device=self.env.device)).item()
        carries = [{} for _ in batches]
        out, all_applied, totals = {}, True, {}
        for part in self.parts:
            applied, part_metrics, work = self._step_part(part, batches, units, total_units, carries, items)
            all_applied = all_applied and applied
            out.update(part_metrics)
            if part.name == MAIN_PART:
                totals = work
        if all_applied:
            self.bad_streak = 0
        else:
            self.skipped_steps += 1
            self.bad_streak += 1
        self.step += 1
        for part in self.parts:
            if part.outer_sync is not None and part.outer_sync.due(self.step):
                part.outer_sync.outer_step()
        for part in [*self.parts, *self.frozen]:
            part.engine.release(part.model)
        task_metrics = self.task.after_step(self.models, self.step)

        elapsed = time.perf_counter() - started
        out.update({"step_time_s": elapsed, "data_wait_s": data_wait, "skipped_steps": self.skipped_steps})
        out["data/padding_fraction"] = 1.0 - totals.pop(VALID_UNITS) / totals.pop(PADDED_UNITS)
        self._step_work = totals
        out.update(self._rates(elapsed))
        out.update(task_metrics)
        return out

    def _rates(self, elapsed: float) -> dict[str, float]:
        """Throughput and model FLOP/s of the step's work over ``elapsed`` seconds."""
        world, out = self.env.world_size, {}
        work = dict(self._step_work)
        if MODEL_FLOPS in work:
            flops_per_device = work.pop(MODEL_FLOPS) / elapsed / world
            out["perf/tflops_per_device"] = flops_per_device / 1e12
            if (utilisation := mfu(flops_per_device, self.peak_flops)) is not None:
                out["perf/mfu"] = utilisation
        for name, total in work.items():
            out[f"throughput/{name}_per_s"] = total / elapsed
            out[f"throughput/{name}_per_s_per_device"] = total / elapsed / world
        return out

    def _step_timing(self) -> dict[str, float]:
        """At a logged step: its wall time from the start of ``train_step`` to now (its checkpoint
        and evaluation included), split by phase (``time/*``), and the rates over it."""
        wall = time.perf_counter() - self._step_started
        return {"step_time_s": wall, **self.clock.read(), **self._rates(wall)}

    def _step_part(self, part: TrainedPart, batches: list[dict], units: list[float], total_units: float,
                   carries: list[dict], items: Counter) -> tuple[bool, dict[str, float], dict[str, float]]:
        """Forward/backward of every micro-batch for one part, then its update. Returns whether
        it was applied, its metrics, and the step's work totals over ranks (the main part's
        collective carries them; empty for the others)."""
        accum = len(batches)
        is_main = part.name == MAIN_PART
        if len(self.parts) > 1:
            # Another part's backward may have reached this part's parameters (a GAN's generator
            # loss runs through the discriminator): only this part's own losses may count.
            part.engine.zero_grad(part.model, part.optimizer)
        loss_sum = torch.zeros((), device=self.env.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(batches):
            weight = units[micro] * self.env.world_size / total_units
            with part.engine.gradient_sync(part.model, enabled=micro == accum - 1), part.engine.autocast():
                with span(f"{part.name}/forward", FORWARD):
                    loss, metrics = self.task.part_loss(part.name, self.models, batch, carries[micro], self.step)
                if loss is not None:
                    if is_main:
                        loss = faults.maybe_poison_loss(loss, self.step + 1, self.env.rank)
                    with span(f"{part.name}/backward", BACKWARD):
                        part.engine.backward(loss * weight)
            if loss is not None:
                loss_sum += loss.detach().float() * units[micro]
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + value.detach().float()

        # One collective for the skip decision, the stop request and every logged number.
        local = {_LOSS: loss_sum / total_units, _NONFINITE: float(not torch.isfinite(loss_sum)),
                 **{_METRIC + name: value / accum for name, value in metric_sums.items()}}
        if is_main:
            local[_STOP] = float(self.preemption.requested)
            local.update({_WORK + name: float(n) for name, n in items.items()})
        with span(f"{part.name}/all_reduce", COMM):
            summed = all_reduce_named(local, self.env.device)
        if is_main:
            self.stop_requested = summed[_STOP] > 0
        with span(f"{part.name}/optimizer", OPTIMIZER):
            applied, grad_norm = part.engine.apply_step(part.model, part.optimizer, update=summed[_NONFINITE] == 0)
            lr = part.scheduler.get_last_lr()[0]
            part.scheduler.step()
            grad_norm = grad_norm.item()
        out = {part.prefixed("loss"): summed[_LOSS], part.prefixed("lr"): lr, part.prefixed("grad_norm"): grad_norm}
        out.update({name.removeprefix(_METRIC): value / self.env.world_size
                    for name, value in summed.items() if name.startswith(_METRIC)})
        work = {name.removeprefix(_WORK): value for name, value in summed.items() if name.startswith(_WORK)}
        return applied, out, work

    def _record_keys(self, keys: list[str]) -> None:
        with self.nonfatal("sample_keys"):
            path = self.run_dir / KEYS_DIR / f"rank_{self.env.rank:05d}.jsonl"
            path.parent.mkdir(exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps({"step": self.step + 1, "keys": keys}) + "\n")

    def _gather_counts(self, step_time: float) -> tuple[dict[str, float], list[float]]:
        """Skipped samples, non-fatal errors and the recipe's counters, summed over ranks, and the
        spread of the step time over ranks (``time/step_max_s``, ``time/step_min_s``,
        ``time/slowest_rank``), in one collective; also every rank's step time."""
        local = {**{f"data/skipped/{reason}": n for reason, n in self.skipped_samples.items()},
                 **{f"errors/{kind}": n for kind, n in self.nonfatal.counts.items()}, **self.task.counters()}
        per_rank = [None] * self.env.world_size
        dist.all_gather_object(per_rank, (local, step_time))
        total: Counter = Counter()
        for counts, _ in per_rank:
            total.update(counts)
        times = [t for _, t in per_rank]
        slowest = max(range(len(times)), key=times.__getitem__)
        out = {name: float(n) for name, n in sorted(total.items())}
        out.update({"time/step_max_s": times[slowest], "time/step_min_s": min(times), "time/slowest_rank": slowest})
        return out, times

    def _evaluate(self) -> dict[str, float]:
        """Rank 0 evaluates the checkpoint just written; the other ranks go on to the next step."""
        if not self.env.is_main:
            return {}
        with self.nonfatal("eval"), span("eval"):
            faults.maybe_raise("eval", self.step)
            return self.task.evaluate(self.checkpointer.dir / step_dirname(self.step))
        return {}

    def _stop(self, saved: bool) -> RunStopped | None:
        """Why the run must stop after this step (its checkpoint ``saved`` or not), if it must."""
        cfg = self.cfg.trainer
        kept = (f"checkpoint step {self.step} written" if saved else
                f"its checkpoint failed (errors/checkpoint), the latest complete one is {self.checkpointer.latest()}")
        if self.stop_requested:
            return RunStopped(f"preempted at step {self.step} (signal {self.preemption.signal_name or 'on another rank'}); "
                              f"{kept}; exit code {REQUEUE_EXIT_CODE}: requeue or re-run the same command to "
                              f"continue", REQUEUE_EXIT_CODE)
        if self.bad_streak >= cfg.max_bad_steps:
            return RunStopped(f"{self.bad_streak} consecutive non-finite steps (steps {self.step - self.bad_streak + 1}"
                              f"-{self.step}, trainer.max_bad_steps={cfg.max_bad_steps}), none applied; {kept} with "
                              f"the last good weights. Lower optim.lr, raise optim.warmup_steps or check the data "
                              f"(data/skipped/* in metrics.jsonl) before resuming", DIVERGED_EXIT_CODE)
        if self.step == cfg.max_steps and not saved:
            return RunStopped(f"finished step {self.step} but {kept}; free disk space and re-run the same command "
                              f"to redo the steps after it", 1)
        return None

    # -- the run ------------------------------------------------------------------------------
    def _step_and_save(self, data_iter, watchdog: HangWatchdog) -> tuple[dict, RunStopped | None]:
        """One step, then its checkpoint and evaluation when due; its metrics and why the run
        must stop after it, if it must."""
        cfg = self.cfg.trainer
        try:
            metrics = self.train_step(data_iter)
        except torch.OutOfMemoryError:
            self.window.on_oom(self.step + 1)
            raise
        self.nonfatal.step = self.step
        watchdog.beat(self.step)
        self.checkpointer.poll()
        must_stop = self.stop_requested or self.bad_streak >= cfg.max_bad_steps
        if not (must_stop or self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps):
            return metrics, None
        started = time.perf_counter()
        with span("checkpoint/save", CHECKPOINT):
            saved = self.save()
        metrics["checkpoint/stall_s"] = time.perf_counter() - started
        evaluate = cfg.eval_every and self.step % cfg.eval_every == 0
        if must_stop or evaluate or self.step == cfg.max_steps:  # these need it on disk
            with span("checkpoint/wait", CHECKPOINT):
                saved = self.checkpointer.wait() and saved
        if saved and evaluate:
            metrics.update(self._evaluate())
        watchdog.beat(self.step)
        return metrics, self._stop(saved)

    def fit(self) -> None:
        cfg = self.cfg.trainer
        latest = self.checkpointer.latest()
        if latest is not None:
            self.resume(latest)
            if self.env.is_main:
                print(f"resumed from {latest} at step {self.step}", flush=True)
                for path in [self.run_dir / "metrics.jsonl", self.run_dir / STEP_TIMES,
                             *(self.run_dir / KEYS_DIR).glob("rank_*.jsonl")]:
                    _truncate_log(path, self.step)
            barrier()
        logger = MetricsLogger(self.run_dir, self.cfg.logging, OmegaConf.to_container(saved_config(self.cfg)),
                               self.env.is_main, self.step, cfg.max_steps, cfg.progress_bar, self.nonfatal)
        data_iter = iter(self.loader)
        with self.preemption, HangWatchdog(cfg.hang_timeout_s, self.env.rank) as watchdog:
            try:
                while self.step < cfg.max_steps:
                    self.window.before_step(self.step + 1)
                    with span("step"):
                        metrics, stop = self._step_and_save(data_iter, watchdog)
                    if stop or self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        metrics.update(self._step_timing())
                        counts, rank_times = self._gather_counts(metrics["step_time_s"])
                        metrics.update(counts)
                        logger.log(self.step, metrics, rank_times)
                    self.window.after_step(self.step)
                    logger.advance()
                    if stop:
                        raise stop
                    faults.after_step(self.step, self.env.rank)
            finally:
                logger.close()
                self.window.close(self.step)
        barrier()
        with self.nonfatal("samples"):
            faults.maybe_raise("samples", self.step)
            self.task.on_train_end(self.run_dir)
        barrier()
        if self.env.is_main:
            with self.nonfatal("samples"):
                self.task.after_train_end(self.run_dir)
            print(f"run directory: {self.run_dir}\n"
                  f"  checkpoints: {self.checkpointer.dir} (latest: {self.checkpointer.latest()})\n"
                  f"  metrics:     {self.run_dir / 'metrics.jsonl'}", flush=True)
        barrier()
