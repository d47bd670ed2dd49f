"""What profiling costs a training step, measured in one run: the step-time breakdown (always on)
against the loop without it, and aurora's ranges (``profile.nvtx=true``) on against off.

One Trainer steps the tiny audio LM on the same batches in three ways, interleaved block by
block so machine noise hits all alike:

- **off**: the step clock replaced by one that keeps nothing (what the loop cost before the
  breakdown; a baseline only this benchmark builds);
- **breakdown**: the loop as it runs, its clock read at every step (``trainer.log_every=1``);
- **ranges**: the same with aurora's ranges on (``TorchRanges``: NVTX ranges where CUDA is,
  ``record_function`` labels always).

The ratios of median step times are printed.

    python -m tools.bench.profile_overhead [--steps 40] [--blocks 5] [--engine ddp]
"""

import statistics

import torch

from aurora.perf.spans import TorchRanges, set_ranges
from tools.bench.loop_overhead import make_batches, parse_args, timed, tiny_lm_trainer


class NoClock:
    """A step clock that keeps nothing: the loop without its breakdown."""

    def start(self) -> None: ...

    def enter(self, phase: str) -> None: ...

    def leave(self) -> None: ...


def main() -> None:
    args = parse_args(__doc__)
    with tiny_lm_trainer(args.engine, 3 * args.steps * args.blocks + 20) as (cfg, trainer):
        clock, batches = trainer.clock, make_batches(cfg, args.steps)

        def off(batch):
            trainer.clock = NoClock()
            trainer.train_step(iter([batch]))

        def breakdown(batch):
            trainer.clock = clock
            trainer.train_step(iter([batch]))
            clock.read()

        def ranges(batch):
            set_ranges(TorchRanges())
            try:
                breakdown(batch)
            finally:
                set_ranges(None)

        variants = {"off": off, "breakdown": breakdown, "ranges": ranges}
        times = {name: [] for name in variants}
        for step in variants.values():
            timed(step, batches[:5])  # warm-up
        for _ in range(args.blocks):
            for name, step in variants.items():
                times[name] += timed(step, batches)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"threads={torch.get_num_threads()} engine={args.engine} steps={len(times['off'])} per variant")
    for name in variants:
        print(f"{name:10s} median {ms[name]:.2f} ms/step")
    print(f"ratio breakdown/off: {ms['breakdown'] / ms['off']:.3f}  (target <= 1.01)")
    print(f"ratio ranges/breakdown: {ms['ranges'] / ms['breakdown']:.3f}")


if __name__ == "__main__":
    main()
