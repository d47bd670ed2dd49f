"""What each engine can do, declared by the engine, and the one place that checks a config
against it. Recipes and the config schema never name an engine to refuse something."""

from dataclasses import dataclass

from aurora.config.schema import EngineConfig, EngineName, SyncMode, TrainConfig


@dataclass(frozen=True)
class Capabilities:
    clip_grad_value: bool = True
    """Clips each gradient element (``trainer.clip_grad_value``) before the norm clip."""
    async_checkpoint: bool = True
    """Its state can be written in the background (``trainer.async_checkpoint``): all of it is
    in DCP's state dict, none in files of its own."""
    hierarchical_sync: bool = True
    """Lets the loop sync gradients inside a node and average parameters across nodes
    (``sync.mode=hierarchical``), instead of reducing across nodes every step itself."""
    resume_on_other_world_size: bool = True
    """Resumes a checkpoint written by another number of ranks."""
    compile: bool = True
    """Its blocks compile (``engine.compile``) into graphs that stay within dynamo's cache."""


def capabilities_of(engine: EngineConfig) -> Capabilities:
    """The capabilities of the engine ``engine`` configures (without building it)."""
    from aurora.engines import engine_class

    return engine_class(engine.name).capabilities(engine)


def describe(engine: EngineConfig) -> str:
    """``engine.name=...`` with the setting that decides its capabilities."""
    if engine.name == EngineName.deepspeed:
        return f"engine.name=deepspeed with engine.deepspeed.zero_stage={engine.deepspeed.zero_stage}"
    if engine.name == EngineName.fsdp and engine.fsdp.hsdp:
        return "engine.name=fsdp with engine.fsdp.hsdp=true"
    return f"engine.name={engine.name.value}"


def check_config(cfg: TrainConfig) -> None:
    """Refuse (ValueError, one line: what, why, what to do) a setting the engine cannot honour."""
    caps = capabilities_of(cfg.engine)
    engine = describe(cfg.engine)
    if cfg.trainer.clip_grad_value is not None and not caps.clip_grad_value:
        raise ValueError(f"trainer.clip_grad_value is not supported by {engine} (it clips by norm only): set "
                         f"trainer.clip_grad_value=null")
    if cfg.trainer.async_checkpoint and not caps.async_checkpoint:
        raise ValueError(f"trainer.async_checkpoint is not supported by {engine} (its checkpoints go through "
                         f"its own save): set trainer.async_checkpoint=false")
    if cfg.engine.compile and not caps.compile:
        raise ValueError(f"engine.compile=true is not supported by {engine}: dynamo traces its hooks on every "
                         f"submodule and recompiles once per submodule, past its cache, then runs eager: use "
                         f"engine.name=fsdp or engine.deepspeed.zero_stage=2, or engine.compile=false")
    if cfg.sync.mode == SyncMode.hierarchical and not caps.hierarchical_sync:
        raise ValueError(f"sync.mode=hierarchical is not supported by {engine}: it reduces across nodes every "
                         f"step itself; use engine.name=ddp, or fsdp without engine.fsdp.hsdp")


def check_resume(engine: EngineConfig, saved_world: int, world: int, checkpoint) -> None:
    """Refuse, before anything is loaded, a resume the engine cannot do on this world size."""
    if saved_world != world and not capabilities_of(engine).resume_on_other_world_size:
        raise RuntimeError(f"{checkpoint} was written by {saved_world} ranks and this job has {world}: "
                           f"{describe(engine)} resumes only on the same number of ranks. Resume with "
                           f"{saved_world} ranks, or go on from its weights with another engine or stage")
