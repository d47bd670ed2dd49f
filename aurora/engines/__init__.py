from aurora.config.schema import EngineConfig, EngineName
from aurora.dist import DistEnv
from aurora.engines.base import Engine
from aurora.engines.ddp import DDPEngine
from aurora.engines.fsdp import FSDPEngine

_ENGINES = {EngineName.ddp: DDPEngine, EngineName.fsdp: FSDPEngine}


def build_engine(cfg: EngineConfig, env: DistEnv) -> Engine:
    return _ENGINES[cfg.name](cfg, env)


__all__ = ["Engine", "build_engine"]
