"""Random token shards in the format data_prep.tokenize writes, with no codec behind them.

    python -m data_prep.synth_tokens --out DIR [--num-clips 32] [--n-q 4] [--codebook-size 256]

For exercising and benchmarking the LM recipe without training a codec first (the LM cannot
learn anything from them, and there is no codec to decode samples with).
"""

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aurora.data.manifest import write_manifest
from aurora.data.tars import TarWriter


def write_token_shards(out: Path, num_clips: int = 32, per_shard: int = 8, n_q: int = 4,
                       codebook_size: int = 256, frames: int = 40, frame_rate: float = 50.0,
                       seed: int = 0, min_frames: int | None = None,
                       caption: Callable[[int], str] | None = None) -> Path:
    """``num_clips`` clips of ``frames`` frames each, or with ``min_frames``, of a length drawn
    uniformly from ``[min_frames, frames]`` per clip (for dynamic batching); clip ``i``'s
    caption is ``caption(i)`` (by default a short one naming it)."""
    caption = caption or _caption
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards, text_bytes = [], 0
    for first in range(0, num_clips, per_shard):
        name = f"shard-{first // per_shard:06d}.tar"
        count = min(per_shard, num_clips - first)
        with TarWriter(str(out / name)) as sink:
            total_frames = 0
            for i in range(first, first + count):
                length = frames if min_frames is None else int(rng.integers(min_frames, frames + 1))
                total_frames += length
                buffer = io.BytesIO()
                np.save(buffer, rng.integers(0, codebook_size, size=(n_q, length)).astype(np.int16))
                meta = {"text": caption(i), "frames": length, "frame_rate": frame_rate}
                text_bytes = max(text_bytes, len(meta["text"].encode("utf-8")))
                sink.write({"__key__": f"clip{i:05d}", "codes.npy": buffer.getvalue(),
                            "json": json.dumps(meta).encode()})
        shards.append({"name": name, "samples": count, "seconds": total_frames / frame_rate})
    write_manifest(out, "tokens", shards, None, n_q=n_q, codebook_size=codebook_size,
                   frame_rate=frame_rate, codec=None, text_bytes_max=text_bytes)
    return out


def _caption(i: int) -> str:
    return f"clip number {i} with a {['low', 'high'][i % 2]} tone"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=8)
    parser.add_argument("--n-q", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=40, help="frames per clip (the most, with --min-frames)")
    parser.add_argument("--min-frames", type=int, default=None, help="draw each clip's length from [min, frames]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_token_shards(args.out, args.num_clips, args.samples_per_shard, args.n_q, args.codebook_size,
                       args.frames, seed=args.seed, min_frames=args.min_frames)
    print(f"wrote {args.num_clips} random token clips to {args.out}")


if __name__ == "__main__":
    main()
