"""The cost of a DPO step against an SFT step on the same sequences, measured in one run.

Each step is a forward, backward and AdamW update of the same LM on 2B sequences of T frames:
- ``sft``: the LM recipe's loss (``delayed_cross_entropy``) on the 2B sequences;
- ``dpo``: the DPO recipe's loss (``aurora.tasks.dpo.pair_preference``) on B pairs (the same 2B
  sequences as chosen and rejected sides), reference log-probs precomputed;
- ``dpo-live``: the same with a frozen reference model run beside the policy (no gradients).

The kinds run interleaved, ``--repeats`` times each after a warm-up, and the medians are
compared (these machines are noisy). The target: ``dpo`` at most 1.05x ``sft``.

    python -m tools.bench.dpo_step_cost [--config configs/lm/tiny.yaml] [--pairs 4] [--frames 150]
        [--repeats 10] [--device cpu] [overrides ...]
"""

import argparse
import copy
import statistics
import time

import torch

from aurora.config import load_config
from aurora.models.audio_lm import AudioLM, delayed_cross_entropy, encode_text, mask_padding
from aurora.tasks.dpo import DPOConfig, pair_preference
from aurora.tasks.lm import LMTrainConfig

TARGET = 1.05
"""The largest DPO/SFT step-time ratio (precomputed reference) this benchmark looks for."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/lm/tiny.yaml", help="an LM config (its model section)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step (2x as many sequences)")
    parser.add_argument("--frames", type=int, default=150, help="frames per sequence")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.backbone.num_hidden_layers=2")
    args = parser.parse_args(argv)
    cfg = load_config(LMTrainConfig, args.config, ["data.shards=unused", *args.overrides])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = AudioLM(cfg.model).to(device)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    B, K, V = args.pairs, cfg.model.n_q, cfg.model.codebook_size
    codes = torch.randint(0, V, (2 * B, K, args.frames), device=device)
    lengths = torch.full((2 * B,), args.frames, device=device)
    text = encode_text([f"caption {i}" for i in range(B)], cfg.model.max_text_len).to(device)
    ref_logps = torch.randn(2 * B, device=device) - 300
    dpo = DPOConfig()

    def sft() -> torch.Tensor:
        masked = mask_padding(codes, lengths, V)
        return delayed_cross_entropy(model(text.repeat(2, 1), masked), masked, lengths, V)[0]

    steps = {
        "sft": sft,
        "dpo": lambda: pair_preference(model, None, text, codes, lengths, ref_logps, dpo)[0].loss.mean(),
        "dpo-live": lambda: pair_preference(model, reference, text, codes, lengths, None, dpo)[0].loss.mean(),
    }

    def timed(loss_fn) -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for fn in steps.values():
        timed(fn)  # warm-up
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"DPO step cost: {B} pairs = {2 * B} sequences x {args.frames} frames, {K} codebooks, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {device}, median of {args.repeats}")
    print(f"{'step':10s} {'ms':>9s} {'x sft':>7s}")
    for name, median in medians.items():
        print(f"{name:10s} {1e3 * median:9.1f} {median / medians['sft']:7.3f}")
    print(f"target: dpo <= {TARGET:g} x sft")


if __name__ == "__main__":
    main()
