"""``aurora train CONFIG [key=value ...]``, ``aurora generate RUN ...`` (``aurora.generation``) and
``aurora export RUN ...`` (``aurora.release.export``); also
``python -m aurora``, under torchrun or not."""

import argparse
import sys

from aurora.config import ConfigError, load_config, peek_task
from aurora.data import DataError
from aurora.distributed.error_file import record_atomically
from aurora.exported import ModelLoadError
from aurora.generation import add_generate_parser
from aurora.release.export import add_export_parser
from aurora.train.run_lock import RunDirBusy, RunLock


def _train(args: argparse.Namespace) -> None:
    from aurora.distributed import init_distributed, shutdown
    from aurora.tasks import get_task
    from aurora.train.determinism import deterministic_kernels
    from aurora.train.loop import Trainer
    from aurora.train.stops import RunStopped

    task_cls = get_task(peek_task(args.config))
    cfg = load_config(task_cls.config_class, args.config, args.overrides)
    with deterministic_kernels(cfg.trainer.deterministic):
        env = init_distributed(cfg.dist)
        try:
            with RunLock(cfg.run.dir, env.is_main):  # one job per run directory
                Trainer(cfg, task_cls, env).fit()
        except RunStopped as stop:
            if env.is_main:
                print(f"aurora: {stop}", file=sys.stderr, flush=True)
            sys.exit(stop.exit_code)
        finally:
            shutdown()


@record_atomically  # under torchrun: an uncaught error goes to the agent's error file, with this rank's traceback
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aurora", description="Distributed training for audio models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a recipe from a YAML config")
    train.add_argument("config", help="YAML file, e.g. configs/lm/tiny.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=20")
    train.set_defaults(func=_train)
    add_generate_parser(commands)
    add_export_parser(commands)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, FileNotFoundError, RunDirBusy, ModelLoadError) as e:
        # Bad input (config, shard paths, manifests, a run.dir in use, models): one clear line, no traceback.
        print(f"aurora: error: {e}", file=sys.stderr)
        sys.exit(2)
