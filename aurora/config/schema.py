"""The parts of a training config shared by every recipe.

Each recipe (a module or package in ``aurora/tasks/``) subclasses :class:`TrainConfig` and adds its own
``model`` (and loss) sections. Fields carry a docstring each: it is the reference for users.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from aurora.data.config import DataConfig
from aurora.ranges import check_ranges, ranged


class EngineName(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"
    deepspeed = "deepspeed"


class SyncMode(str, Enum):
    flat = "flat"
    hierarchical = "hierarchical"


class OuterOptimizer(str, Enum):
    average = "average"
    nesterov = "nesterov"


class OptimizerName(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class LRSchedule(str, Enum):
    cosine = "cosine"
    exponential = "exponential"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Backend(str, Enum):
    auto = "auto"
    gloo = "gloo"
    nccl = "nccl"


class ProfileMode(str, Enum):
    off = "off"
    nsys = "nsys"
    torch = "torch"


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class RunConfig:
    dir: str = MISSING
    """Run directory: resolved config, metrics, checkpoints and samples. Re-running with the
    same directory resumes from its latest complete checkpoint."""
    seed: int = 0
    """Seed for model initialisation, data order and sampling (identical on every rank)."""
    trust_checkpoint: bool = False
    """Read the training runs this config names as inputs (``model.init_from``, a frozen part's
    source such as a teacher) although their checkpoint files are pickles, which can run code
    when read: only for runs you made or trust (``aurora.exported``). Exported folders need no
    trust, and the run's own ``run.dir`` is always read."""


@dataclass
class TrainerConfig:
    max_steps: int = ranged(100, 0)
    """Optimizer steps to train for (the run is step-based; the data stream is infinite)."""
    grad_accum_steps: int = ranged(1, 1)
    """Micro-batches per optimizer step; gradients are synchronised only on the last one."""
    clip_grad_value: Optional[float] = ranged(None, above=0)
    """Clamp every gradient element to [-v, v] before norm clipping; null disables it."""
    clip_grad_norm: Optional[float] = ranged(1.0, above=0)
    """Rescale gradients to at most this global L2 norm; null disables clipping (the norm is
    still computed and logged)."""
    checkpoint_every: int = ranged(50, 1)
    """Save a checkpoint every N steps (and always at the last step)."""
    log_every: int = ranged(1, 1)
    """Write a metrics line every N steps."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""
    record_sample_keys: bool = False
    """Append the keys of the samples each rank trains on to RUN/sample_keys/rank_NNNNN.jsonl
    (one ``{"step", "keys"}`` line per step): an audit of data order across resumes."""
    keep_last_n: Optional[int] = ranged(None, 1)
    """Keep only the newest N complete checkpoints (older ones are deleted after a new one is
    complete; a higher-numbered one, left by a rolled-back ``latest``, is kept); null keeps them all."""
    async_checkpoint: bool = False
    """Write checkpoints in a background thread (``dcp.async_save``): the loop stalls only to
    copy the state to CPU memory. The checkpoint becomes ``latest`` once written, seen at a later
    step boundary; each save waits for the one before."""
    max_bad_steps: int = ranged(20, 1)
    """Stop the run after this many consecutive non-finite steps (each is skipped on every
    rank), with a checkpoint of the last good weights and exit code 3."""
    hang_timeout_s: Optional[float] = ranged(1800.0, above=0)
    """A rank that completes no step (or checkpoint) for this long dumps every thread's stack
    and exits with code 124, so the launcher restarts the job; null disables the watchdog. The
    clock starts at the first step a process completes (loader start-up and warm-up are not
    timed). Must be shorter than ``dist.timeout_s`` and longer than the slowest step plus a save."""
    deterministic: bool = False
    """Deterministic kernels (``torch.use_deterministic_algorithms``, cuBLAS's fixed workspace,
    no cuDNN autotuning), so that on a GPU a resumed run ends bit-identical to an uninterrupted
    one, as it does on a CPU either way. Costs speed on a GPU (flash attention's backward and
    cuDNN's fastest kernels are not deterministic); an operator with no deterministic kernel
    stops the run with torch's error naming it. Without it, runs on a GPU agree to rounding."""
    eval_every: int = ranged(0, 0)
    """Every N steps, rank 0 computes the loss on ``data.eval_shards`` from the checkpoint just
    written (a multiple of ``checkpoint_every``); 0 disables evaluation."""
    eval_batches: int = ranged(8, 1)
    """Batches of ``data.eval_shards`` per evaluation (always the same ones)."""


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adamw
    """adamw, or sgd (with ``momentum``; its update is linear in the gradient, which makes
    model averaging across nodes every step equal plain data parallelism)."""
    lr: float = ranged(3e-4, 0)
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    momentum: float = ranged(0.0, 0, 1)
    """SGD momentum."""
    weight_decay: float = ranged(0.1, 0)
    """Weight decay of matrices (decoupled in AdamW, L2 in SGD); norms and biases get none."""
    eps: float = ranged(1e-8, above=0)
    """AdamW epsilon."""
    warmup_steps: int = ranged(0, 0)
    """Linear warm-up from 0 to lr over this many steps."""
    schedule: LRSchedule = LRSchedule.cosine
    """What follows warm-up: cosine (decay to lr * min_lr_ratio over decay_steps) or
    exponential (lr * gamma ** steps since warm-up, as torch's ExponentialLR; GAN codecs)."""
    decay_steps: Optional[int] = ranged(None, 1)
    """cosine: length of the decay that follows warm-up, in steps; null means
    trainer.max_steps. Set it explicitly when a run is extended, so the schedule is stable."""
    min_lr_ratio: float = ranged(0.1, 0, 1)
    """cosine: the decay ends at lr * min_lr_ratio and stays there."""
    gamma: float = ranged(0.999996, above=0, high=1)
    """exponential: LR multiplier per optimizer step (DAC's 0.999996 halves it in ~173k steps)."""


@dataclass
class DDPConfig:
    bucket_cap_mb: float = ranged(100.0, above=0)
    """Gradient bucket size in MiB. Larger buckets mean fewer, bigger all-reduces; torch's
    25 MiB default is tuned for small models."""


@dataclass
class FSDPConfig:
    reshard_after_forward: bool = True
    """Free gathered parameters after forward (ZeRO-3 style, less memory) or keep them until
    backward (ZeRO-2 style, less communication)."""
    prefetch: int = ranged(0, 0)
    """Blocks whose parameter all-gather is issued ahead of use, in forward and in backward
    (explicit prefetching); 0 keeps FSDP2's implicit prefetching."""
    hsdp: bool = False
    """Hybrid sharding on a (replicate, shard) mesh: parameters sharded over the GPUs of one
    node, replicated across nodes (gradients reduce-scattered in the node, all-reduced across
    nodes)."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    """ZeRO stage. 1 partitions optimizer state, 2 also gradients, 3 also parameters."""
    reduce_bucket_size: int = 200_000_000
    """Elements (not bytes) per gradient reduce bucket."""
    allgather_bucket_size: int = 200_000_000
    """Elements (not bytes) per parameter all-gather bucket (stage 1/2); stage 3's prefetch
    bucket."""
    overlap_comm: bool = True
    """Overlap gradient reduction with backward."""
    offload_optimizer: bool = False
    """Keep optimizer state (and its update) in CPU memory."""
    config: Optional[str] = None
    """A DeepSpeed JSON file merged over the configuration generated from these fields (its keys
    win), for settings aurora does not expose."""

    def __post_init__(self):
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"engine.deepspeed.zero_stage must be 1, 2 or 3, got {self.zero_stage}")


@dataclass
class EngineConfig:
    name: EngineName = EngineName.ddp
    """Data-parallel engine: ddp (replicated model), fsdp (FSDP2 fully_shard per block) or
    deepspeed (ZeRO); each has its own section below."""
    precision: Precision = Precision.fp32
    """Compute precision: fp32, or bf16 autocast (parameters and optimizer state stay fp32)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward instead of keeping them (less memory,
    about one more forward of compute). Parameter names do not change."""
    compile: bool = False
    """``torch.compile`` each block (the shard units) in place before wrapping."""
    compile_backend: str = "inductor"
    """``compile=true``: torch.compile's backend: ``inductor`` (generated kernels), or for
    debugging ``aot_eager`` (dynamo's graphs and AOTAutograd's backward, run by eager kernels:
    what compiling changes, without inductor's code generation) or ``eager``."""
    ddp: DDPConfig = field(default_factory=DDPConfig)
    """engine.name=ddp: DistributedDataParallel's settings."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """engine.name=fsdp: FSDP2's settings."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """engine.name=deepspeed: DeepSpeed ZeRO's settings."""

    def __post_init__(self):
        if self.fsdp.hsdp and self.name != EngineName.fsdp:
            raise ValueError(f"engine.fsdp.hsdp=true needs engine.name=fsdp (got {self.name.value})")


MOVED_KEYS = {
    **{f"engine.{key}": f"engine.ddp.{key}" for key in ("bucket_cap_mb",)},
    **{f"engine.{key}": f"engine.fsdp.{key}" for key in ("reshard_after_forward", "prefetch", "hsdp")},
    **{f"engine.{key}": f"engine.deepspeed.{key}" for key in ("zero_stage", "reduce_bucket_size",
                                                              "allgather_bucket_size", "overlap_comm",
                                                              "offload_optimizer")},
    "engine.deepspeed_config": "engine.deepspeed.config",
}
"""Keys that moved: old dotted name -> new one (a config using an old name is refused, naming
the new one)."""


@dataclass
class SyncConfig:
    mode: SyncMode = SyncMode.flat
    """flat: every step synchronises gradients over all ranks. hierarchical: gradients are
    synchronised inside each node every step, parameters averaged across nodes every
    ``outer_every`` steps (local SGD / DiLoCo), so inter-node links carry one exchange per K steps."""
    outer_every: int = ranged(8, 1)
    """hierarchical: steps between two cross-node parameter averages."""
    outer_optimizer: OuterOptimizer = OuterOptimizer.average
    """hierarchical: average (plain model averaging) or nesterov (DiLoCo: SGD with Nesterov
    momentum on the averaged change since the last outer step)."""
    outer_lr: float = ranged(0.7, above=0)
    """hierarchical, nesterov: outer learning rate."""
    outer_momentum: float = ranged(0.9, 0, 1)
    """hierarchical, nesterov: outer momentum."""


@dataclass
class DistConfig:
    backend: Backend = Backend.auto
    """Collective backend: auto picks nccl when CUDA is available, else gloo. gloo keeps every
    tensor on the CPU (the job trains on the CPU, also where GPUs exist)."""
    timeout_s: int = ranged(2400, 1)
    """Timeout of every collective, in seconds. Longer than ``trainer.hang_timeout_s``, so a
    hang is reported by the watchdog (with every thread's stack) before a collective times out."""


@dataclass
class LoggingConfig:
    wandb: bool = False
    """Also log metrics to Weights & Biases (metrics.jsonl is always written)."""
    wandb_project: str = "aurora"
    """wandb project name."""
    wandb_mode: WandbMode = WandbMode.offline
    """offline keeps everything in RUN/wandb for a later `wandb sync` (clusters without
    internet lose nothing); online streams to the server."""


@dataclass
class ProfileConfig:
    """A profiling window over steps ``start_step``..``end_step`` (README, "Profiling"). The
    step-time breakdown (``time/*`` in metrics.jsonl) is always on and needs none of this."""
    mode: ProfileMode = ProfileMode.off
    """off; nsys: ``cudaProfilerStart``/``Stop`` around the window, for ``nsys profile
    --capture-range=cudaProfilerApi`` (``launch/nsys.sh``; needs CUDA); torch: a Kineto trace of
    the window per rank, ``RUN/profile/rank{r}_steps{a}-{b}.json.gz`` (CPU and GPU)."""
    start_step: int = ranged(10, 1)
    """First optimizer step of the window (1-based, as metrics.jsonl counts them)."""
    end_step: int = ranged(12, 1)
    """Last optimizer step of the window (included); not before ``start_step``."""
    ranks: list[int] = field(default_factory=list)
    """Ranks that profile; empty means every rank. The others train on without waiting for the
    profiled ranks' traces (written in the background)."""
    nvtx: bool = False
    """Emit aurora's NVTX ranges (``aurora/step``, ``aurora/<part>/forward``, ...) on every step,
    not only inside the window: for an ``nsys`` capture of the whole run."""
    record_shapes: bool = False
    """torch: record each operator's input shapes in the trace."""
    with_stack: bool = False
    """torch: record the Python stack of each operator (large traces)."""
    memory: bool = False
    """Record memory: on CUDA a memory snapshot (``torch.cuda.memory._record_memory_history``)
    from the start of the run, dumped to ``RUN/profile/rank{r}_steps{a}-{b}_memory.pickle`` at
    the window's end and to ``rank{r}_oom_step{n}_memory.pickle`` on an out-of-memory error (view
    them at pytorch.org/memory_viz); under mode=torch also the trace's allocation events, which a
    CPU run records too. A CPU run has no snapshot: it says so once and goes on."""

    def __post_init__(self):
        if self.end_step < self.start_step:
            raise ValueError(f"profile.end_step ({self.end_step}) is before profile.start_step ({self.start_step}): "
                             f"the window is steps start..end, set end_step >= start_step")


@dataclass
class TrainConfig:
    task: str = MISSING
    """Recipe to run: the name of a module in aurora/tasks (codec, lm)."""
    run: RunConfig = field(default_factory=RunConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        check_ranges(self)  # first: the checks below divide by some of them
        hang = self.trainer.hang_timeout_s
        if hang is not None and hang >= self.dist.timeout_s:
            raise ValueError(f"trainer.hang_timeout_s ({hang:g}) must be shorter than dist.timeout_s "
                             f"({self.dist.timeout_s}), so the watchdog reports a hang before a collective "
                             f"times out; raise dist.timeout_s or lower trainer.hang_timeout_s")
        from aurora.engines.capabilities import check_config  # engines know what they can do

        check_config(self)
        if self.trainer.eval_every:
            if self.trainer.eval_every % self.trainer.checkpoint_every:
                raise ValueError(f"trainer.eval_every ({self.trainer.eval_every}) must be a multiple of "
                                 f"trainer.checkpoint_every ({self.trainer.checkpoint_every}): evaluation "
                                 f"reads the checkpoint just written")
            if self.data.eval_shards is None:
                raise ValueError("trainer.eval_every is set but data.eval_shards is not: point it at a "
                                 "held-out shard set")
