"""How long a checkpoint stalls training: synchronous DCP save vs ``trainer.async_checkpoint``.

One process builds the trainer of an LM (``--hidden``/``--layers`` set its size) and saves
the same state alternately with a synchronous and an asynchronous Checkpointer, so machine
noise hits both alike. The stall is the time ``Trainer.save`` blocks the loop (gathering the
data state, writing the small per-rank files, and for async the copy to CPU memory); the
async write then finishes in the background, timed until it is finalised.

    python -m tools.bench.checkpoint_stall [--hidden 512] [--layers 8] [--repeats 5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aurora.config import load_config
from aurora.distributed import init_distributed, shutdown
from aurora.tasks.lm import LMTask, LMTrainConfig
from aurora.train.checkpoint import Checkpointer
from aurora.train.loop import Trainer
from data_prep.synth_tokens import write_token_shards


def checkpoint_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_token_shards(tmp / "shards")
        cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [
            f"run.dir={tmp / 'run'}", f"data.shards={shards}", "trainer.progress_bar=false",
            f"model.backbone.hidden_size={args.hidden}", f"model.backbone.intermediate_size={4 * args.hidden}",
            f"model.backbone.num_hidden_layers={args.layers}", "model.backbone.num_attention_heads=8",
            "model.backbone.num_key_value_heads=2", "data.num_workers=0"])
        env = init_distributed(cfg.dist)
        try:
            trainer = Trainer(cfg, LMTask, env)
            trainer.train_step(iter(trainer.loader))  # optimizer state exists, as in a real save
            savers = {"sync": Checkpointer(trainer.run_dir, env, trainer.nonfatal, keep_last_n=1),
                      "async": Checkpointer(trainer.run_dir, env, trainer.nonfatal, keep_last_n=1, async_save=True)}
            stalls = {name: [] for name in savers}
            async_total = []
            for _ in range(args.repeats):
                for name, saver in savers.items():
                    trainer.checkpointer = saver
                    trainer.step += 1
                    started = time.perf_counter()
                    assert trainer.save()
                    stalls[name].append(time.perf_counter() - started)
                    saver.wait()
                    if name == "async":
                        async_total.append(time.perf_counter() - started)
            size = checkpoint_bytes(saver.latest())
        finally:
            shutdown()

    params = sum(p.numel() for p in trainer.model.parameters())
    sync, stall = statistics.median(stalls["sync"]), statistics.median(stalls["async"])
    print(f"model: {params / 1e6:.1f} M parameters, checkpoint {size / 2**20:.0f} MiB, {args.repeats} saves each, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"sync save stall (median)        {sync:8.3f} s")
    print(f"async save stall (median)       {stall:8.3f} s")
    print(f"async save until finalised      {statistics.median(async_total):8.3f} s")
    print(f"stall ratio async/sync          {stall / sync:8.3f}")


if __name__ == "__main__":
    main()
