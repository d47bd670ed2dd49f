"""An LM + prompt token shards -> preference-pair shards (aurora.data.pairs), resumable, on any
number of ranks.

    torchrun --nproc-per-node 8 -m data_prep.make_pairs --lm LM --prompts TOKENS --out PAIRS
        [--mode golden|ranked] [--reward caption_match|mel_distance] [--num-candidates 4]
        [--min-margin 0] [--seconds 2] [--cfg-scale 1] [--temperature 1] [--top-k 50] [--top-p 1]
        [--seed 0] [--step N] [--batch-size 8] [--device cpu|cuda] [--trust-checkpoint]

``--lm`` is an exported LM (``aurora.generation.export_lm``) or, with ``--trust-checkpoint``
only, an LM training run (its checkpoint files are pickles: ``aurora.exported``).

Each prompt is a clip of the token shards (its caption, its real codes, its json):
- ``golden`` (SpeechAlign): chosen = the clip's real codes, rejected = the LM's sample for its
  caption; with ``--reward``, both sides are scored and recorded.
- ``ranked``: ``--num-candidates`` samples of the caption, scored by ``--reward``
  (aurora.metrics.rewards); chosen = the best, rejected = the worst. A prompt whose candidates
  all score the same, or whose margin (best minus worst) is below ``--min-margin``, states no
  preference: it is skipped and counted (``low_margin``).
A pair whose two sides are the same codes is skipped and counted (``identical_pair``). Every
side is ``--seconds`` long (the real codes cut to it; a shorter clip keeps its length), so the
DPO recipe's ``data.context_frames`` must be at least that many frames.

Seeds: candidate c of the prompt with key K is sampled with a seed hashed from (``--seed``, K, c),
so a prompt's pair does not depend on its batch-mates, the ranks or an earlier run; 2 ranks
write the bytes 1 process writes.

Output, per prompt shard, a pair shard of the same name (``KEY.chosen.npy``, ``KEY.rejected.npy``,
``KEY.json``); at the end rank 0 writes ``PAIRS/manifest.json`` (kind ``pairs``: the token set's
``n_q``, ``codebook_size``, ``frame_rate``, the ``policy`` that sampled: its run, checkpoint and id,
the mode, reward, settings and skip counts) and a copy of the codec (``PAIRS/codec``). Resuming
and errors as in ``data_prep.tokenize`` (aurora's shard jobs: ``data_prep.shard_job``). Run
``data_prep.ref_logprobs`` next to add the reference's log-probs.

Test hook: ``AURORA_FAULT_PAIRS_KILL=I`` makes the rank writing shard I SIGKILL itself after its
first batch of pairs, in a job's first attempt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from aurora.config.schema import Backend, DistConfig
from aurora.data.config import DataError
from aurora.data.manifest import resolve_shards, write_manifest
from aurora.data.members import metadata
from aurora.data.pairs import CHOSEN, REJECTED, frames_field, member, npy_bytes
from aurora.data.skips import IDENTICAL_PAIR, BadSample, SkipCounter
from aurora.data.tars import TarWriter, read_shard
from aurora.data.tokens import load_codes
from aurora.distributed import barrier, init_distributed, shutdown
from aurora.exported import ModelLoadError, read_config
from aurora.generation import LM, LMSampler, SamplingSettings, check_captions, lm_codec_dir
from aurora.tasks.codec.load import load_codec
from aurora.metrics.rewards import REWARDS, get_reward
from aurora.tasks.dpo import lm_id
from data_prep.shard_job import (FINAL_WAIT_S, RECORD_VERSION, JobError, fault_kill_shard, finished_record,
                                 longest_text, pick_device, record_path, run_job, write_record)
from data_prep.shard_writer import TAR_MTIME
from data_prep.tokenize import codec_id

PROG = "data_prep.make_pairs"
FAULT_KILL_ENV = "AURORA_FAULT_PAIRS_KILL"
MODES = ("golden", "ranked")
LOW_MARGIN = "low_margin"
"""A ranked prompt whose candidates all score the same, or whose best and worst score closer
than ``--min-margin``."""
CODEC_DIR = "codec"


def candidate_seed(seed: int, key: str, candidate: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{key}/{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # a non-negative int64 for torch.Generator


def read_prompts(url: str, expected: int | None, n_q: int, codebook_size: int | None,
                 counter: SkipCounter) -> list[tuple[str, np.ndarray, dict]]:
    """(key, codes, json) of every usable clip of a token shard, in order; bad ones counted."""
    shard = os.path.basename(url)
    prompts = []
    for sample in read_shard(url, counter.add, expected):
        try:
            prompts.append((sample["__key__"], load_codes(sample, n_q, codebook_size), metadata(sample)))
        except BadSample as bad:
            counter.add(bad.reason, shard, bad.detail)
    return prompts


def pair_shard(index: int, url: str, out_path: Path, sampler: LMSampler, args: argparse.Namespace,
               settings: SamplingSettings, expected: int | None) -> dict:
    """Write the pairs of one prompt shard into ``out_path``; return its record."""
    started = time.perf_counter()
    counter = SkipCounter()
    model = sampler.config
    prompts = read_prompts(url, expected, model.n_q, model.codebook_size, counter)
    reward = get_reward(args.reward) if args.reward else None
    candidates = args.num_candidates if args.mode == "ranked" else 1
    frames = max(1, round(settings.seconds * sampler.frame_rate))
    rate = sampler.codec.cfg.sample_rate
    kill_at = fault_kill_shard(FAULT_KILL_ENV)
    written, seconds, text_bytes = 0, 0.0, 0
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as file:
        sink = TarWriter(file, mtime=TAR_MTIME)
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start: start + args.batch_size]
            seeds = [candidate_seed(args.seed, key, c) for key, _, _ in batch for c in range(candidates)]
            captions = [meta.get("text", "") for _, _, meta in batch for _ in range(candidates)]
            codes, audio = sampler.sample(captions, seeds, settings)
            for i, (key, real_codes, meta) in enumerate(batch):
                real = torch.from_numpy(real_codes[:, :frames].astype(np.int64))
                real_audio = sampler.codec.decode(real[None].to(sampler.device)).float().cpu()[0, 0]
                sampled = range(i * candidates, (i + 1) * candidates)
                pair = _pair(key, real, real_audio, [codes[j] for j in sampled], [audio[j, 0] for j in sampled],
                             meta, rate, reward, args, counter, shard=os.path.basename(url))
                if pair is None:
                    continue
                chosen, rejected, info = pair
                sink.write({"__key__": key, member(CHOSEN): npy_bytes(chosen), member(REJECTED): npy_bytes(rejected),
                            "json": json.dumps({**info, "seeds": seeds[i * candidates: (i + 1) * candidates]}).encode()})
                written += 1
                text_bytes = max(text_bytes, len(info["text"].encode("utf-8")))
                seconds += max(chosen.shape[1], rejected.shape[1]) / sampler.frame_rate
            if index == kill_at:  # test hook: die with a half-written NAME.tmp
                file.flush()
                os.fsync(file.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        sink.close()
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, out_path)
    return {"version": RECORD_VERSION, "name": out_path.name, "samples": written, "seconds": seconds,
            "prompts": len(prompts), "text_bytes_max": text_bytes, "skipped": dict(sorted(counter.take().items())),
            "tar_bytes": out_path.stat().st_size, "source": url, "source_bytes": os.path.getsize(url),
            "wall_s": time.perf_counter() - started}


def _pair(key, real, real_audio, sampled_codes, sampled_audio, meta, rate, reward, args, counter, shard):
    """(chosen, rejected, json) of one prompt as int16 arrays, or None when it is skipped (counted)."""
    info = {"text": meta.get("text", ""), "mode": args.mode, "source": {"key": key, "shard": shard}}
    if args.mode == "golden":
        sides = [real, sampled_codes[0]]
        if reward is not None:
            info["rewards"] = {"name": args.reward, CHOSEN: reward(real_audio, rate, meta, real_audio),
                               REJECTED: reward(sampled_audio[0], rate, meta, real_audio)}
    else:
        scores = [reward(a, rate, meta, real_audio) for a in sampled_audio]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] == scores[worst] or scores[best] - scores[worst] < args.min_margin:
            why = "all the same" if scores[best] == scores[worst] else f"closer than --min-margin {args.min_margin}"
            counter.add(LOW_MARGIN, shard, f"{key}: candidates score {min(scores):.4f} to {max(scores):.4f}: {why}")
            return None
        sides = [sampled_codes[best], sampled_codes[worst]]
        info["rewards"] = {"name": args.reward, CHOSEN: scores[best], REJECTED: scores[worst], "all": scores}
    chosen, rejected = (side.numpy().astype(np.int16) for side in sides)
    if chosen.shape == rejected.shape and np.array_equal(chosen, rejected):
        counter.add(IDENTICAL_PAIR, shard, f"{key}: chosen and rejected are the same codes")
        return None
    info.update({frames_field(CHOSEN): chosen.shape[1], frames_field(REJECTED): rejected.shape[1]})
    return chosen, rejected, info


# -- the command ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", required=True, type=Path,
                        help="the LM that samples (the policy): an exported LM, or (with --trust-checkpoint) an LM run")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read --lm even if it is a training run: its checkpoint files are pickles, which can run "
                             "code; only for runs you made or trust")
    parser.add_argument("--prompts", required=True, help="token shards (data_prep.tokenize): captions and real codes")
    parser.add_argument("--out", required=True, type=Path, help="output directory for the pair shards; run again "
                                                                "to resume")
    parser.add_argument("--mode", choices=MODES, default="golden")
    parser.add_argument("--reward", choices=sorted(REWARDS), help="scores samples (required by --mode ranked)")
    parser.add_argument("--num-candidates", type=int, default=4, help="ranked: samples per prompt (default 4)")
    parser.add_argument("--min-margin", type=float, default=0.0,
                        help="ranked: skip a prompt whose best and worst candidates score closer (default 0: skip "
                             "only prompts whose candidates all tie)")
    defaults = SamplingSettings()
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="length of each side")
    parser.add_argument("--cfg-scale", type=float, default=defaults.cfg_scale)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, help="the LM checkpoint of this step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    parser.add_argument("--device", help="cpu, cuda (this rank's GPU) or cuda:N (default: cuda if available)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.mode == "ranked" and args.reward is None:
        parser.error("--mode ranked needs --reward (what ranks the candidates)")
    if args.mode == "ranked" and args.num_candidates < 2:
        parser.error(f"--num-candidates must be at least 2 to rank, got {args.num_candidates}")
    if args.batch_size < 1 or not args.seconds > 0:
        parser.error("--batch-size must be >= 1 and --seconds > 0")


def _check_inputs(args: argparse.Namespace) -> tuple[list[str], dict, dict]:
    """The prompt shards, their manifest, the LM's token manifest; JobError for what cannot be
    used. Reads every prompt's caption, so a caption too long stops the job before it samples."""
    try:
        lm_cfg = read_config(args.lm, LM, trust=args.trust_checkpoint, what="--lm")
        urls, manifest = resolve_shards(args.prompts)
        lm_codec = load_codec(lm_codec_dir(args.lm), what="--lm's codec").codec
    except (DataError, ModelLoadError) as exn:
        raise JobError(str(exn)) from None
    if manifest is None or manifest["kind"] != "tokens":
        raise JobError(f"--prompts {args.prompts} is not a token shard set with a manifest: tokenize the prompt clips "
                       f"with data_prep.tokenize, using the codec the LM was trained on")
    if codec_id(lm_codec) != manifest.get("codec_id"):
        raise JobError(f"--prompts {args.prompts} were tokenized by codec {manifest.get('codec_id')}, but the LM {args.lm} "
                       f"learnt the tokens of codec {codec_id(lm_codec)}: tokenize the prompts with that codec")
    counter = SkipCounter()
    expected = {s["name"]: s["samples"] for s in manifest["shards"]}
    captions = [meta.get("text", "") for url in urls
                for _, _, meta in read_prompts(url, expected.get(os.path.basename(url)), manifest["n_q"], None, counter)]
    check_captions(captions, lm_cfg.max_text_len)
    return urls, manifest, expected


def run(args: argparse.Namespace) -> None:
    urls, manifest, expected = _check_inputs(args)
    env = init_distributed(DistConfig(backend=Backend.gloo, timeout_s=FINAL_WAIT_S))
    try:
        device = pick_device(args.device, env.device)
        sampler = LMSampler(args.lm, device, args.step, trust=args.trust_checkpoint, what="--lm")
        settings = SamplingSettings(args.seconds, args.temperature, args.top_k, args.top_p, args.cfg_scale)
        policy = {"run": str(args.lm), "checkpoint": str(sampler.checkpoint), "id": lm_id(sampler.config, sampler.lm)}
        job = {"mode": args.mode, "reward": args.reward, "seed": args.seed, "settings": asdict(settings),
               "num_candidates": args.num_candidates if args.mode == "ranked" else 1, "min_margin": args.min_margin}
        expect = {"policy": policy["id"], "job": job}
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        done = {i for i, url in enumerate(urls) if finished_record(out, url, expect, "pair set") is not None}
        barrier()  # everyone has seen which shards were done before anyone writes a record
        mine = [i for i in range(len(urls)) if i not in done][env.rank::env.world_size]
        for index in mine:
            url = urls[index]
            record = pair_shard(index, url, out / os.path.basename(url), sampler, args, settings,
                                expected.get(os.path.basename(url)))
            write_record(out, {**record, **expect, "rank": env.rank})
        barrier()
        if env.is_main:
            _finish(out, urls, expect, manifest, sampler, policy, job, args, len(done))
        barrier()
    finally:
        shutdown()


def _finish(out: Path, urls: list[str], expect: dict, manifest: dict, sampler: LMSampler, policy: dict, job: dict,
            args: argparse.Namespace, done_before: int) -> None:
    from aurora.tasks.codec.load import export_codec

    records = []
    for url in urls:
        record = finished_record(out, url, expect, "pair set")
        if record is None:
            raise JobError(f"{record_path(out, os.path.basename(url))} is missing or does not match its tar after "
                           f"every rank finished: run the same command again to redo that shard")
        records.append(record)
    skipped: Counter = Counter()
    for record in records:
        skipped.update(record["skipped"])
    export_codec(sampler.codec.cpu(), out / CODEC_DIR)
    shards = [{"name": r["name"], "samples": r["samples"], "seconds": r["seconds"]} for r in records]
    write_manifest(out, "pairs", shards, manifest["sample_rate"], n_q=manifest["n_q"],
                   codebook_size=manifest["codebook_size"], frame_rate=manifest["frame_rate"],
                   hop_length=manifest.get("hop_length"), codec=CODEC_DIR, codec_id=manifest.get("codec_id"),
                   policy=policy, **job, source=str(args.prompts), skipped=dict(sorted(skipped.items())),
                   text_bytes_max=longest_text(records))
    pairs, prompts = sum(s["samples"] for s in shards), sum(r["prompts"] for r in records)
    print(f"{PROG}: {pairs} {args.mode} pairs from {prompts} prompts in {len(shards)} shards in {out} "
          f"({done_before} shards done before); skipped: {dict(skipped) or 'none'}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    run_job(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
