"""Sampling speed of the audio LM: ``AudioLM.generate`` (KV cache) against recomputing the whole
prefix at every step, on the same model, prompts and length, measured in one run.

Both decode greedily (so they must agree code for code, which is checked) one delayed frame
per step; the recomputing loop is what a model without a cache does. Frames per second of
generated audio and the ratio are printed; the target is a ratio of at least 5 at 10 s.

    python -m tools.bench.sampling_speed [--seconds 10] [--batch 4] [--device cpu] [--config configs/lm/tiny.yaml]
"""

import argparse
import time

import torch

from aurora.config import load_config
from aurora.models.audio_lm import AudioLM, encode_text, unconditional_text
from aurora.models.delay_pattern import delay_pattern_mask, revert_delay_pattern
from aurora.tasks.lm import LMTrainConfig

TARGET = 5.0
"""The cache's speed-up over recomputation at 10 s of audio that this benchmark looks for."""
FRAME_RATE = 50.0
"""Frames per second of the tiny codec's tokens."""


@torch.no_grad()
def recompute_greedy(model: AudioLM, text: torch.Tensor, num_frames: int, cfg_scale: float = 1.0) -> torch.Tensor:
    """Greedy codes [B, n_q, num_frames] without a cache: every step runs the whole prefix again
    (and, for guidance, a separate unconditional pass). The reference ``generate`` must equal."""
    K, special = model.config.n_q, model.special_token
    real = delay_pattern_mask(K, num_frames, text.device)
    delayed = text.new_empty(text.shape[0], K, 0)
    uncond = unconditional_text(text.shape[0], text.shape[1]).to(text.device)
    for t in range(num_frames + K - 1):
        logits = model.forward_delayed(text, delayed)[:, :, -1]
        if cfg_scale != 1.0:
            free = model.forward_delayed(uncond, delayed)[:, :, -1]
            logits = free + cfg_scale * (logits - free)
        frame = logits.argmax(-1)
        frame[:, ~real[:, t]] = special
        delayed = torch.cat([delayed, frame[..., None]], dim=2)
    return revert_delay_pattern(delayed)


def _timed(fn) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    out = fn()
    if out.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/lm/tiny.yaml", help="an LM config (its model section)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    cfg = load_config(LMTrainConfig, args.config, ["data.shards=unused"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = AudioLM(cfg.model).to(device).eval()
    text = encode_text([f"a bright sine tone {i}" for i in range(args.batch)], cfg.model.max_text_len).to(device)
    frames = round(args.seconds * FRAME_RATE)
    _timed(lambda: model.generate(text, 4, top_k=1))  # warm-up
    cached, cached_s = _timed(lambda: model.generate(text, frames, top_k=1))
    recomputed, recomputed_s = _timed(lambda: recompute_greedy(model, text, frames))
    if not torch.equal(cached, recomputed):
        raise SystemExit("sampling_speed: the cached and the recomputed greedy codes differ")
    generated = args.batch * args.seconds
    print(f"sampling {args.seconds:g} s x {args.batch} prompts ({frames} frames each, {cfg.model.n_q} codebooks) on {device}")
    print(f"  KV cache:            {cached_s:7.2f} s  {generated / cached_s:7.2f} s of audio/s")
    print(f"  recomputing prefix:  {recomputed_s:7.2f} s  {generated / recomputed_s:7.2f} s of audio/s")
    print(f"  ratio {recomputed_s / cached_s:.2f}x (target >= {TARGET:g}x)")


if __name__ == "__main__":
    main()
