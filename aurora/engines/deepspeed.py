"""DeepSpeed ZeRO (stage 1, 2 or 3), configured from aurora's engine fields.

The DeepSpeed configuration is generated (``deepspeed_config_dict``): ZeRO stage, bucket sizes
in elements, ``overlap_comm``, optional CPU offload of the optimizer state, gradient clipping
and accumulation; a user JSON (``engine.deepspeed.config``) is merged over it. The loop's own
AdamW and LR schedule are kept: DeepSpeed wraps the optimizer and steps it.

Precision: bf16 runs as torch autocast around DeepSpeed's fp32 parameters (as on the other
engines), so gradients are reduced in fp32. DeepSpeed's forward decides autocast for itself
(``runtime/torch_autocast.py``): on CUDA, an autocast it finds enabled around it is switched
off unless its config has a ``torch_autocast`` section, so the generated config always has one in
bf16, with no "lower precision safe" modules (their gradients would be reduced in bf16).

Gradient accumulation is DeepSpeed's own: the loop marks the last micro-batch as the boundary.
Stages 1 reduce once per step; stages 2 and 3 keep gradients partitioned, so they
reduce-scatter every micro-batch. DeepSpeed clips by norm and skips an update whose gradient
norm is not finite (a non-finite loss on any rank makes every rank's reduced gradient
non-finite), and reports whether it applied it.

Several parts (a GAN's discriminator beside the codec): one DeepSpeed engine each, with its own
optimizer, accumulation boundary and checkpoint folder. A frozen part (no optimizer) is a plain
replica under ZeRO-1/2, which partition only what training has (optimizer state, gradients), and
is partitioned by DeepSpeed's ZeRO-3 without an optimizer (``DeepSpeedZeRoOffload``) under ZeRO-3.

Checkpoints: the step's DCP directory carries the trainer state; each trained part's model and
optimizer go through ``save_checkpoint``/``load_checkpoint`` into its folder
(``aurora.runs.engine_files_dir``: ``deepspeed/`` for the main model, ``parts/<name>/`` for the
others). A frozen ZeRO-3 part that changes (an EMA target) writes each rank's partitions there
(DeepSpeed saves no optimizer-less engine); a frozen ZeRO-1/2 replica goes into DCP. Another
number of ranks resumes a ZeRO-1/2 checkpoint through DeepSpeed's universal checkpoint format
(converted on first use); ZeRO-3 resumes on the same number of ranks only.
"""

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from aurora.config.schema import EngineConfig, Precision, TrainConfig
from aurora.distributed import DistEnv, barrier
from aurora.engines.base import Engine, OptimizerFactory
from aurora.engines.capabilities import Capabilities

TAG = "state"
"""DeepSpeed's checkpoint tag inside a part's engine folder (each aurora checkpoint holds one)."""
UNIVERSAL_TAG = "universal"
"""The same state in DeepSpeed's universal format, made when another world size resumes it."""
PARTITIONS = "zero3_partitions_rank_{rank:05d}.pt"
"""A frozen ZeRO-3 part's partitions on one rank, in its engine folder."""


def _deepspeed(env: DistEnv):
    # DeepSpeed picks its accelerator at import; on a machine without GPUs say so, since a CUDA
    # build of torch would otherwise make it pick CUDA.
    if env.device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config_dict(cfg: TrainConfig) -> dict:
    """The DeepSpeed configuration for ``cfg``: generated, then ``engine.deepspeed.config`` over it."""
    e = cfg.engine.deepspeed
    zero = {
        "stage": e.zero_stage,
        "reduce_bucket_size": e.reduce_bucket_size,
        "allgather_bucket_size": e.allgather_bucket_size,
        "overlap_comm": e.overlap_comm,
        "contiguous_gradients": True,
    }
    if e.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = e.allgather_bucket_size
        # Otherwise ZeRO-3 replaces torch.nn.functional.linear in the whole process, also for
        # the plain model copies evaluation and sampling build beside the engine.
        zero["memory_efficient_linear"] = False
    if e.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    generated = {
        # Bookkeeping only (DeepSpeed's sample counters): aurora's loader makes the batches.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.trainer.grad_accum_steps,
        "gradient_clipping": cfg.trainer.clip_grad_norm or 0.0,
        "zero_optimization": zero,
        # aurora's AdamW (any torch optimizer) rather than DeepSpeed's fused ones, also offloaded.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
    }
    if cfg.engine.precision == Precision.bf16:
        generated["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    if e.config is None:
        return generated
    path = Path(e.config)
    try:
        user = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"engine.deepspeed.config={path}: cannot read it as JSON ({err}); point it at a "
                         f"DeepSpeed config file or set it to null") from err
    return _merge(generated, user)


class DeepSpeedEngine(Engine):
    @classmethod
    def capabilities(cls, cfg: EngineConfig) -> Capabilities:
        # DeepSpeed clips by norm only and writes its state through its own (synchronous) save,
        # and reduces across all ranks every step. Measured with DeepSpeed 0.19.8: a ZeRO-3
        # universal load trains on to weights 2e-4 away from the same-world resume within 3
        # steps (its optimizer state is not all back), so ZeRO-3 resumes on the same world only.
        # ZeRO-3 gathers and releases parameters in hooks on every submodule, which dynamo traces
        # into each compiled block, with a guard on the submodule's id: measured on the small LM,
        # one recompile per submodule, 3 frames past the cache limit in 4 steps.
        stage3 = cfg.deepspeed.zero_stage == 3
        return Capabilities(clip_grad_value=False, async_checkpoint=False, hierarchical_sync=False,
                            resume_on_other_world_size=not stage3, compile=not stage3)

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        super().__init__(cfg, env)
        self.shards_parameters = cfg.engine.deepspeed.zero_stage == 3
        self.ds_config = deepspeed_config_dict(cfg)
        self.deepspeed = _deepspeed(env)
        # DeepSpeed reads the local rank from the environment, which only torchrun sets.
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
        self.deepspeed.init_distributed(dist_backend=env.backend)
        self.ds = None
        """The DeepSpeed engine (set by ``prepare``; none for a frozen ZeRO-1/2 replica)."""
        self._backward_since_step = False

    def prepare(self, model: nn.Module, shard_units: list[nn.Module],
                make_optimizer: OptimizerFactory | None) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        model, optimizer = super().prepare(model, shard_units, make_optimizer)
        if optimizer is None and not self.shards_parameters:
            return model, None  # ZeRO-1/2 partition only what training has: a frozen part stays a replica
        config = self.ds_config if optimizer is not None else self._frozen_config()
        self.ds, _, _, _ = self.deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        # The loop's LR schedule drives ``optimizer``'s param_groups, which DeepSpeed's wrapper steps.
        return self.ds, optimizer

    def _frozen_config(self) -> dict:
        # A frozen part's partitions are its only copy and what an in-place update (an EMA)
        # changes: no parameter may stay gathered beside them from one forward to the next.
        return _merge(self.ds_config, {"zero_optimization": {"stage3_param_persistence_threshold": 0}})

    @property
    def _frozen(self) -> bool:
        """A ZeRO-3 part without an optimizer (DeepSpeed's offload engine stands in for one)."""
        from deepspeed.runtime.zero.parameter_offload import DeepSpeedZeRoOffload

        return isinstance(self.ds.optimizer, DeepSpeedZeRoOffload)

    def wrap(self, model: nn.Module, shard_units: list[nn.Module], frozen: bool) -> nn.Module:
        return model.to(self.env.device)

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        self.ds.set_gradient_accumulation_boundary(enabled)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already weights each micro-batch by its share of the step.
        self.ds.backward(loss, scale_wrt_gas=False)
        self._backward_since_step = True

    def zero_grad(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        # DeepSpeed's optimizer wrapper holds the model's gradients; the torch optimizer inside it
        # sees only DeepSpeed's flat fp32 partitions.
        self.ds.optimizer.zero_grad(set_to_none=True)

    def apply_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, update: bool) -> tuple[bool, torch.Tensor]:
        if not self._backward_since_step:
            # No micro-batch of this step had a loss for this part (a GAN's discriminator before
            # its start step): as on the other engines, nothing changes and the norm is 0.
            return True, torch.zeros(())
        self._backward_since_step = False
        # ``update`` is False only after a non-finite loss (every rank agrees): its gradients,
        # reduced into every rank's, are non-finite too, and DeepSpeed's step skips such an update.
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        norm = torch.tensor(float("nan") if norm is None else float(norm))
        return self.ds.was_step_applied(), norm

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, self.deepspeed.DeepSpeedEngine) else model

    def release(self, model: nn.Module) -> None:
        if not self.shards_parameters:
            return
        if self._frozen:
            # Its partitions are its only copy, which an EMA update changes: none may stay gathered.
            self.ds.optimizer.partition_all_parameters()
            return
        # Another part's backward through this one's ZeRO-3 hooks (a generator's loss through the
        # discriminator) gathers its parameters; their release waits on this part's optimizer,
        # which drains it in its own backward only.
        self.ds.optimizer.parameter_offload.release_backward_leftovers()

    @torch.no_grad()
    def local_shards(self, model: nn.Module) -> list[torch.Tensor]:
        if not self.shards_parameters:
            return super().local_shards(model)
        return [p.ds_tensor for p in self.unwrap(model).parameters()]

    def _gathered(self, param: torch.Tensor, modifier_rank=None):
        if hasattr(param, "ds_id"):  # stage 3: partitioned, gather it for the duration
            return self.deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank)
        return contextlib.nullcontext()

    @torch.no_grad()
    def read_full(self, param: torch.Tensor) -> torch.Tensor:
        with self._gathered(param):
            return param.detach().clone()

    @torch.no_grad()
    def write_full(self, param: torch.Tensor, value: torch.Tensor) -> None:
        with self._gathered(param, modifier_rank=0):
            param.copy_(value)
        # The optimizer steps its own fp32 partition; the parameter is rebuilt from it.
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(param, value.to(param.dtype))

    def state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
        if self.ds is None:  # a frozen ZeRO-1/2 replica: DCP keeps it, as for DDP
            return super().state_dict(model, optimizer)
        return {}, {}

    def load_state_dict(self, model, optimizer, model_state: dict, optim_state: dict) -> None:
        if self.ds is None:
            super().load_state_dict(model, optimizer, model_state, optim_state)

    def save_native(self, model: nn.Module, folder: Path) -> None:
        if self.ds is None:
            return
        if self._frozen:
            self._save_partitions(model, folder)
        else:
            self.ds.save_checkpoint(str(folder), tag=TAG, save_latest=False)

    def load_native(self, model: nn.Module, folder: Path) -> None:
        """Restore model and optimizer. Saved by another number of ranks (ZeRO-1/2), the
        checkpoint is first converted to DeepSpeed's universal format (``ds_to_universal``: every
        parameter's fp32 weights and optimizer state whole, once, beside the saved files), which
        any world size loads. A frozen ZeRO-3 part reads back this rank's partitions."""
        if self.ds is None:
            return
        if self._frozen:
            self._load_partitions(model, folder)
            return
        saved = len(list((folder / TAG).glob("*optim_states.pt")))
        universal = saved != self.env.world_size
        if universal:
            self._convert_to_universal(folder)
        self.ds._config.load_universal_checkpoint = universal
        try:
            loaded, _ = self.ds.load_checkpoint(str(folder), tag=UNIVERSAL_TAG if universal else TAG,
                                                load_lr_scheduler_states=False)
        finally:
            self.ds._config.load_universal_checkpoint = False
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load {folder}")

    def _save_partitions(self, model: nn.Module, folder: Path) -> None:
        """This rank's partition of each parameter, with the parameters' shapes."""
        folder.mkdir(parents=True, exist_ok=True)
        params = list(self.unwrap(model).named_parameters())
        torch.save({"shapes": {name: list(p.ds_shape) for name, p in params},
                    "partitions": {name: p.ds_tensor.detach().cpu().clone() for name, p in params}},
                   folder / PARTITIONS.format(rank=self.env.rank))

    @torch.no_grad()
    def _load_partitions(self, model: nn.Module, folder: Path) -> None:
        saved = torch.load(folder / PARTITIONS.format(rank=self.env.rank), map_location="cpu",
                           weights_only=True)["partitions"]
        for shard, (name, _) in zip(self.local_shards(model), self.unwrap(model).named_parameters()):
            shard.copy_(saved[name])

    def _convert_to_universal(self, native: Path) -> None:
        """Rank 0 writes ``native/UNIVERSAL_TAG`` once (into a temporary name, then renamed, so an
        interrupted conversion is redone); the others wait."""
        target = native / UNIVERSAL_TAG
        if self.env.is_main and not target.is_dir():
            from argparse import Namespace

            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

            tmp = native / (UNIVERSAL_TAG + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            ds_to_universal(Namespace(input_folder=str(native / TAG), output_folder=str(tmp), num_extract_workers=1,
                                      num_merge_workers=1, keep_temp_folder=False, strict=True,
                                      inject_missing_state=True))  # aurora's model has no tensor-parallel layout to describe
            os.replace(tmp, target)
        barrier()


def consolidated_weights(folder: Path) -> dict[str, torch.Tensor] | None:
    """The full fp32 weights of the model whose engine files are in ``folder``
    (``aurora.runs.engine_files_dir``) if DeepSpeed wrote them (any stage, merged from the
    partitions in this process alone), else None."""
    if (folder / TAG).is_dir():
        os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=TAG)
    files = sorted(folder.glob(PARTITIONS.replace("{rank:05d}", "*")))
    if not files:
        return None
    ranks = [torch.load(path, map_location="cpu", weights_only=True) for path in files]
    # Rank r holds elements [r * n, (r + 1) * n) of the flattened parameter, padded at the end.
    return {name: torch.cat([r["partitions"][name] for r in ranks])[:math.prod(shape)].view(shape)
            for name, shape in ranks[0]["shapes"].items()}
