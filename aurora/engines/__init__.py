from aurora.config.schema import EngineName, TrainConfig
from aurora.distributed import DistEnv
from aurora.engines.base import Engine
from aurora.engines.ddp import DDPEngine
from aurora.engines.deepspeed import DeepSpeedEngine
from aurora.engines.fsdp import FSDPEngine

_ENGINES: dict[EngineName, type[Engine]] = {EngineName.ddp: DDPEngine, EngineName.fsdp: FSDPEngine,
                                            EngineName.deepspeed: DeepSpeedEngine}


def engine_class(name: EngineName) -> type[Engine]:
    """The engine ``engine.name`` selects (its module imports deepspeed only when one is built)."""
    return _ENGINES[name]


def build_engine(cfg: TrainConfig, env: DistEnv) -> Engine:
    return engine_class(cfg.engine.name)(cfg, env)


__all__ = ["Engine", "build_engine", "engine_class"]
