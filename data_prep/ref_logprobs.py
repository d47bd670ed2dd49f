"""A reference LM's log-probs of preference pairs, written into the pair shards, on any number of ranks.

    torchrun --nproc-per-node 8 -m data_prep.ref_logprobs --lm LM --pairs PAIRS
        [--step N] [--batch-size 8] [--device cpu|cuda] [--trust-checkpoint]

``--lm`` is an exported LM (``aurora.generation.export_lm``) or, with ``--trust-checkpoint``
only, an LM training run (its checkpoint files are pickles: ``aurora.exported``).

Each pair's ``ref_chosen_logp`` and ``ref_rejected_logp`` (the summed log-probs of its sides, as the
DPO recipe computes them: ``aurora.tasks.dpo.completion_logps``, in fp32) and ``ref_id`` (the
reference's id: ``aurora.tasks.dpo.lm_id``) are added to its json; the shards are rewritten in
place (``NAME.tmp``, then renamed) and rank 0 records the reference in the manifest
(``reference``: id, run, checkpoint, precision). With them, ``dpo.reference=precomputed`` trains
without running the reference: a streamed data set carries its own reference, computed once.

Resuming: a rewritten shard's record is ``NAME.ref.json``; a re-run keeps the shards done for the
same reference and redoes the others (interrupted, or done for another reference). A pair that
cannot be read is dropped and counted, as in training.

Test hook: ``AURORA_FAULT_REF_KILL=I`` makes the rank rewriting shard I SIGKILL itself after its
first batch, in a job's first attempt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import torch

from aurora.config.schema import Backend, DistConfig
from aurora.data.config import DataError
from aurora.data.manifest import MANIFEST_NAME, resolve_shards
from aurora.data.pairs import REF_ID, SIDES, PairExamples, ref_field
from aurora.data.skips import BadSample, SkipCounter
from aurora.data.tars import TarWriter, read_shard
from aurora.distributed import barrier, init_distributed, shutdown
from aurora.exported import ModelLoadError, load_model, read_config
from aurora.generation import LM
from aurora.models.audio_lm import AudioLM, encode_text
from aurora.tasks.dpo import completion_logps, lm_id
from data_prep.shard_job import (FINAL_WAIT_S, RECORD_VERSION, JobError, fault_kill_shard, finished_record,
                                 pick_device, run_job, write_record)
from data_prep.shard_writer import TAR_MTIME

PROG = "data_prep.ref_logprobs"
FAULT_KILL_ENV = "AURORA_FAULT_REF_KILL"
RECORD_SUFFIX = ".ref.json"
PRECISION = "fp32"


def rewrite_shard(index: int, url: str, model: AudioLM, ident: str, examples: PairExamples, batch_size: int,
                  device: torch.device, expected: int | None) -> dict:
    """Add the reference's log-probs to every pair of one shard (rewritten in place); its record."""
    started = time.perf_counter()
    counter = SkipCounter()
    shard = os.path.basename(url)
    max_text_len = model.config.max_text_len
    kill_at = fault_kill_shard(FAULT_KILL_ENV)
    path = Path(url)
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "wb") as file:
        sink = TarWriter(file, mtime=TAR_MTIME)
        pending: list[tuple[dict, dict]] = []

        def flush() -> None:
            nonlocal written
            if not pending:
                return
            batch = examples.collate([example for _, example in pending])
            text = encode_text(batch["text"], max_text_len).repeat(2, 1).to(device)
            with torch.no_grad():
                logps = completion_logps(model, text, batch["codes"].to(device), batch["lengths"].to(device)).logps
            pairs = len(pending)
            for i, (sample, _) in enumerate(pending):
                meta = json.loads(sample["json"])
                meta.update({ref_field(side): logps[j * pairs + i].item() for j, side in enumerate(SIDES)})
                meta[REF_ID] = ident
                sink.write({**{k: v for k, v in sample.items() if not k.startswith("__")},
                            "__key__": sample["__key__"], "json": json.dumps(meta).encode()})
                written += 1
            pending.clear()
            if index == kill_at:  # test hook: die with a half-written NAME.tmp
                file.flush()
                os.fsync(file.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

        for sample in read_shard(url, counter.add, expected):
            try:
                pending.append((sample, examples.decode(sample)))
            except BadSample as bad:
                counter.add(bad.reason, shard, bad.detail)
                continue
            if len(pending) == batch_size:
                flush()
        flush()
        sink.close()
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    size = path.stat().st_size
    return {"version": RECORD_VERSION, "name": shard, "samples": written, "skipped": dict(sorted(counter.take().items())),
            "tar_bytes": size, "source": url, "source_bytes": size, "wall_s": time.perf_counter() - started}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", required=True, type=Path, help="the reference (the DPO policy's model.init_from): an "
                                                                "exported LM, or (with --trust-checkpoint) an LM run")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read --lm even if it is a training run: its checkpoint files are pickles, which can run "
                             "code; only for runs you made or trust")
    parser.add_argument("--pairs", required=True, type=Path, help="pair shards (data_prep.make_pairs), rewritten")
    parser.add_argument("--step", type=int, help="the LM checkpoint of this step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward (default 8)")
    parser.add_argument("--device", help="cpu, cuda (this rank's GPU) or cuda:N (default: cuda if available)")
    return parser


def run(args: argparse.Namespace) -> None:
    try:
        config = read_config(args.lm, LM, trust=args.trust_checkpoint, what="--lm")
        urls, manifest = resolve_shards(str(args.pairs))
    except (DataError, ModelLoadError) as exn:
        raise JobError(str(exn)) from None
    if manifest is None or manifest["kind"] != "pairs":
        raise JobError(f"--pairs {args.pairs} is not a pair shard set with a manifest: make it with data_prep.make_pairs")
    for key in ("n_q", "codebook_size"):
        if manifest.get(key) != getattr(config, key):
            raise JobError(f"--pairs {args.pairs} hold codes of {key}={manifest.get(key)}, the LM {args.lm} has "
                           f"{key}={getattr(config, key)}: give the LM the pairs were made for")
    env = init_distributed(DistConfig(backend=Backend.gloo, timeout_s=FINAL_WAIT_S))
    try:
        device = pick_device(args.device, env.device)
        loaded = load_model(args.lm, LM, trust=args.trust_checkpoint, what="--lm", step=args.step)
        checkpoint, model = loaded.checkpoint or args.lm, loaded.model
        ident = lm_id(config, model)
        model.to(device).eval()
        expect = {"ref_id": ident}
        done = {i for i, url in enumerate(urls)
                if finished_record(args.pairs, url, expect, "pair set", redo_others=True, suffix=RECORD_SUFFIX)}
        barrier()
        # Whole pairs, never cropped: the longest side sets the padding of its batch only.
        examples = PairExamples(manifest["n_q"], 2**31, pad_to_longest=True, codebook_size=manifest["codebook_size"])
        counts = {s["name"]: s["samples"] for s in manifest["shards"]}
        for index in [i for i in range(len(urls)) if i not in done][env.rank::env.world_size]:
            url = urls[index]
            record = rewrite_shard(index, url, model, ident, examples, args.batch_size, device,
                                   counts.get(os.path.basename(url)))
            write_record(args.pairs, {**record, **expect, "rank": env.rank}, RECORD_SUFFIX)
        barrier()
        if env.is_main:
            _finish(args, urls, manifest, expect, {"id": ident, "run": str(args.lm), "checkpoint": str(checkpoint),
                                                   "precision": PRECISION}, len(done))
        barrier()
    finally:
        shutdown()


def _finish(args, urls: list[str], manifest: dict, expect: dict, reference: dict, done_before: int) -> None:
    records = [finished_record(args.pairs, url, expect, "pair set", suffix=RECORD_SUFFIX) for url in urls]
    if any(r is None for r in records):
        raise JobError(f"a shard of {args.pairs} has no matching {RECORD_SUFFIX} record after every rank finished: run "
                       f"the same command again to redo it")
    for entry, record in zip(manifest["shards"], records):
        entry["samples"] = record["samples"]
    manifest.update(num_samples=sum(r["samples"] for r in records), reference=reference)
    path = args.pairs / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, path)
    dropped = Counter()
    for record in records:
        dropped.update(record["skipped"])
    print(f"{PROG}: reference {reference['id']} log-probs in {sum(r['samples'] for r in records)} pairs of "
          f"{len(urls)} shards in {args.pairs} ({done_before} done before); dropped: {dict(dropped) or 'none'}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        build_parser().error(f"--batch-size must be >= 1, got {args.batch_size}")
    run_job(PROG, lambda: run(args))


if __name__ == "__main__":
    main()
