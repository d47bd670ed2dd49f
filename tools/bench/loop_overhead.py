"""Overhead of aurora's training loop over a bare PyTorch loop, measured in one run.

Both loops train the same tiny audio LM (same initial weights) on the same batches with the
same math: forward, masked delay-pattern cross-entropy, backward, clip by norm, AdamW, LR
schedule. aurora's loop adds its engine wrapper, the all-ranks finiteness/metrics
all-reduce, metrics bookkeeping and the data-wait clock. Timings interleave the two loops
block by block so machine noise hits both alike; the ratio of median step times is printed.

    python -m tools.bench.loop_overhead [--steps 60] [--blocks 5] [--engine ddp]
"""

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from aurora.config import load_config
from aurora.distributed import init_distributed, shutdown
from aurora.models.audio_lm import AudioLM, delayed_cross_entropy, encode_text, mask_padding
from aurora.tasks.lm import LMTask, LMTrainConfig
from aurora.train.loop import Trainer, build_optimizer
from aurora.train.schedule import build_scheduler
from data_prep.synth_tokens import write_token_shards


def make_batches(cfg, count: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    b, frames = cfg.data.batch_size, cfg.data.context_frames
    return [{"codes": torch.randint(0, cfg.model.codebook_size, (b, cfg.model.n_q, frames), generator=g),
             "lengths": torch.full((b,), frames), "text": [f"a bright sine tone {i}" for i in range(b)],
             "keys": [f"k{i}" for i in range(b)]} for _ in range(count)]


class BareLoop:
    """What a researcher writes by hand: no wrapper, no collectives, no metrics."""

    def __init__(self, cfg):
        torch.manual_seed(cfg.run.seed)
        self.cfg = cfg
        self.model = AudioLM(cfg.model)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.trainer.max_steps)

    def step(self, batch: dict) -> None:
        special = self.cfg.model.codebook_size
        codes = mask_padding(batch["codes"], batch["lengths"], special)
        logits = self.model(encode_text(batch["text"], self.cfg.model.max_text_len), codes)
        loss, _ = delayed_cross_entropy(logits, codes, batch["lengths"], special)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


def timed(step, batches: list[dict]) -> list[float]:
    times = []
    for batch in batches:
        started = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - started)
    return times


def parse_args(doc: str) -> argparse.Namespace:
    """The loop benchmarks' arguments: steps per block, blocks, engine."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    parser.add_argument("--blocks", type=int, default=5, help="alternating blocks per loop")
    parser.add_argument("--engine", default="ddp", choices=["ddp", "fsdp"])
    return parser.parse_args()


@contextmanager
def tiny_lm_trainer(engine: str, max_steps: int):
    """The tiny LM's config on 64 frames and a Trainer of it in one process, in a temporary run
    directory: ``(cfg, trainer)``."""
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_token_shards(Path(tmp) / "tokens", num_clips=8, frames=64)
        cfg = load_config(LMTrainConfig, "configs/lm/tiny.yaml", [
            f"run.dir={tmp}/run", f"data.shards={shards}", f"engine.name={engine}",
            f"trainer.max_steps={max_steps}", "trainer.progress_bar=false", "data.context_frames=64"])
        env = init_distributed(cfg.dist)
        try:
            yield cfg, Trainer(cfg, LMTask, env)
        finally:
            shutdown()


def main() -> None:
    args = parse_args(__doc__)
    with tiny_lm_trainer(args.engine, args.steps * args.blocks + 10) as (cfg, trainer):
        bare = BareLoop(cfg)
        batches = make_batches(cfg, args.steps)
        for loop in (bare.step, lambda b: trainer.train_step(iter([b]))):
            timed(loop, batches[:5])  # warm-up
        bare_times, aurora_times = [], []
        for _ in range(args.blocks):
            bare_times += timed(bare.step, batches)
            aurora_times += timed(lambda b: trainer.train_step(iter([b])), batches)
    bare_ms = statistics.median(bare_times) * 1e3
    aurora_ms = statistics.median(aurora_times) * 1e3
    print(f"threads={torch.get_num_threads()} engine={args.engine} steps={len(bare_times)} per loop")
    print(f"bare PyTorch loop: median {bare_ms:.2f} ms/step")
    print(f"aurora loop:       median {aurora_ms:.2f} ms/step")
    print(f"ratio aurora/bare: {aurora_ms / bare_ms:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
