from aurora.config.schema import EngineName, TrainConfig
from aurora.distributed import DistEnv
from aurora.engines.base import Engine
from aurora.engines.ddp import DDPEngine
from aurora.engines.fsdp import FSDPEngine


def build_engine(cfg: TrainConfig, env: DistEnv) -> Engine:
    if cfg.engine.name == EngineName.deepspeed:
        from aurora.engines.deepspeed import DeepSpeedEngine  # imports deepspeed: only when asked for

        return DeepSpeedEngine(cfg, env)
    return {EngineName.ddp: DDPEngine, EngineName.fsdp: FSDPEngine}[cfg.engine.name](cfg, env)


__all__ = ["Engine", "build_engine"]
