"""Audio shards + a trained codec -> token shards.

    torchrun --nproc-per-node 2 -m data_prep.tokenize --shards SHARDS --codec RUN --out TOKENS

Each rank encodes its share of the shards (shard i goes to rank i % world) into a token shard
of the same name: ``KEY.codes.npy`` (int16 [n_q, T]) + ``KEY.json`` (the source json plus
``frames`` and ``frame_rate``). Rank 0 then writes ``TOKENS/manifest.json`` and a copy of the
codec (``TOKENS/codec/``) so the token set can be decoded back to audio on its own.
Bad samples are skipped and counted, as in training.
"""

import argparse
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds

from aurora.config.schema import DistConfig
from aurora.data.audio import AudioExamples
from aurora.data.manifest import resolve_shards, write_manifest
from aurora.data.skips import BadSample, SkipCounter
from aurora.data.tars import read_shard
from aurora.dist import barrier, init_distributed, shutdown
from aurora.tasks.codec import codec_from_run, export_codec

CODEC_DIR = "codec"


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def tokenize_shard(url: str, out_path: Path, codec, examples: AudioExamples, counter: SkipCounter,
                   expected: int | None, device: torch.device) -> dict:
    """Encode every usable sample of one audio shard; return its manifest entry."""
    frame_rate = codec.cfg.frame_rate
    samples, frames_total = 0, 0
    tmp = out_path.with_name(out_path.name + ".tmp")
    with wds.TarWriter(str(tmp)) as sink:
        for sample in read_shard(url, counter.add, expected):
            try:
                example = examples.decode(sample, crop_rng=None)
            except BadSample as bad:
                counter.add(bad.reason, os.path.basename(url), bad.detail)
                continue
            meta = json.loads(sample["json"])
            with torch.no_grad():
                codes = codec.encode(example["audio"].view(1, 1, -1).to(device))[0]
            meta.update(frames=codes.shape[-1], frame_rate=frame_rate)
            sink.write({"__key__": example["key"], "codes.npy": _npy_bytes(codes.cpu().numpy().astype(np.int16)),
                        "json": json.dumps(meta).encode()})
            samples += 1
            frames_total += codes.shape[-1]
    os.replace(tmp, out_path)
    return {"name": out_path.name, "samples": samples, "seconds": frames_total / frame_rate}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="audio shard set: a directory with manifest.json or a brace pattern")
    parser.add_argument("--codec", required=True, help="codec training run directory (or one of its checkpoints)")
    parser.add_argument("--out", required=True, help="output directory for the token shards")
    args = parser.parse_args(argv)

    env = init_distributed(DistConfig())
    try:
        urls, manifest = resolve_shards(args.shards)
        expected = {shard["name"]: shard["samples"] for shard in manifest["shards"]} if manifest else {}
        codec = codec_from_run(args.codec).to(env.device)
        out = Path(args.out)
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
        barrier()
        examples = AudioExamples(codec.cfg.sample_rate, segment_seconds=None)
        counter = SkipCounter()
        entries = {}
        for index in range(env.rank, len(urls), env.world_size):
            url = urls[index]
            name = os.path.basename(url)
            entries[index] = tokenize_shard(url, out / name, codec, examples, counter, expected.get(name), env.device)
        gathered = [None] * env.world_size
        dist.all_gather_object(gathered, (entries, counter.take()))
        if env.is_main:
            shards = [entry for _, entry in sorted((i, e) for part, _ in gathered for i, e in part.items())]
            skipped: dict[str, int] = {}
            for _, counts in gathered:
                for reason, n in counts.items():
                    skipped[reason] = skipped.get(reason, 0) + n
            export_codec(codec.cpu(), out / CODEC_DIR)
            write_manifest(out, "tokens", shards, codec.cfg.sample_rate, n_q=codec.cfg.n_q,
                           codebook_size=codec.cfg.codebook_size, frame_rate=codec.cfg.frame_rate,
                           codec=CODEC_DIR, source=str(args.shards), skipped=skipped)
            total = sum(s["samples"] for s in shards)
            print(f"tokenized {total} clips into {len(shards)} shards in {out} "
                  f"({codec.cfg.n_q} codebooks at {codec.cfg.frame_rate:g} Hz); skipped: {skipped or 'none'}")
        barrier()
    finally:
        shutdown()


if __name__ == "__main__":
    main()
