"""What DPO gains on the synthetic corpus: held-out preference accuracy and the caption match of
fresh samples, before and after, from one base LM.

    python -m tools.bench.dpo_gain --base demo/lm --prompts demo/tokens [--work runs/dpo_gain]
        [--candidates 8] [--seconds 2] [--steps 100] [--heldout 256] [--nproc 2] [--mode ranked|golden]

1. Pairs: ``data_prep.make_pairs --mode ranked --reward caption_match`` samples ``--candidates``
   clips of each training caption (``--prompts``) from the base LM; chosen/rejected = the best
   and worst match (aurora.metrics.caption_match: the kind and pitch the caption names, measured
   from the audio); ``data_prep.ref_logprobs`` adds the base model's log-probs. ``--mode golden``
   (SpeechAlign) pairs each clip's real codes, as chosen, with one sample instead: a control
   that tells a recipe that learns nothing from a reward that the LM cannot learn.
2. Held-out: ``--heldout`` new synthetic clips (another corpus seed), sharded and tokenized with
   the prompts' codec, ranked the same way: the held-out pairs.
3. DPO: ``aurora train configs/dpo/tiny.yaml`` from the base for ``--steps`` steps, evaluated on
   the held-out pairs: ``eval/rewards/accuracies`` is how often the DPO model's implicit reward
   ranks a held-out pair as the reward did (the base model, being the reference, ranks none: 0.5
   is chance).
4. Fresh samples: ``aurora generate`` from the base and from the DPO model for the held-out
   captions, one clip each (the same seeds), scored by caption match: the mean with a 95%
   confidence interval, and the mean paired difference with its interval.

The target: held-out accuracy >= 0.75, and a higher caption match after DPO than before. Every
stage is a real run of the commands above; their outputs stay in ``--work``.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf
import torch

from aurora.metrics.caption_match import caption_match

TARGET_ACCURACY = 0.75
BATCH = 8
"""Pairs per DPO batch (training and held-out evaluation)."""


def sh(*args: str, nproc: int = 1) -> None:
    """Run ``python -m ...args`` (under torchrun with ``nproc`` > 1 processes), failing loudly."""
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    print("$", " ".join(["python" if nproc == 1 else "torchrun", *args]), flush=True)
    subprocess.run([*prefix, *args], check=True)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% normal-approximation confidence interval."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1))
    return mean, 1.96 * sd / math.sqrt(n)


def scores(samples_dir: Path, params: list[dict]) -> list[float]:
    """Caption match of each generated clip (samples.jsonl order = prompt order) with its caption's parameters."""
    records = [json.loads(line) for line in (samples_dir / "samples.jsonl").read_text().splitlines()]
    out = []
    for record in records:
        audio, rate = sf.read(samples_dir / record["file"], dtype="float32")
        out.append(caption_match(torch.from_numpy(audio), rate, params[record["index"]]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("demo/lm"), help="the base LM run (make demo trains one)")
    parser.add_argument("--prompts", type=Path, default=Path("demo/tokens"), help="the base LM's token shards")
    parser.add_argument("--work", type=Path, default=Path("runs/dpo_gain"))
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--heldout", type=int, default=256)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="the held-out corpus' seed (the demo's is 0)")
    parser.add_argument("--mode", default="ranked", choices=("ranked", "golden"), help="how pairs are made")
    args = parser.parse_args(argv)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sampling = ["--seconds", str(args.seconds), "--batch-size", "16"]
    candidates = ["--num-candidates", str(args.candidates)] if args.mode == "ranked" else []
    ranked = ["--mode", args.mode, "--reward", "caption_match", *candidates, *sampling]

    sh("-m", "data_prep.make_pairs", "--lm", str(args.base), "--trust-checkpoint", "--prompts", str(args.prompts), "--out",
       str(work / "pairs"), *ranked, nproc=args.nproc)
    sh("-m", "data_prep.ref_logprobs", "--lm", str(args.base), "--trust-checkpoint", "--pairs", str(work / "pairs"), nproc=args.nproc)

    sh("-m", "data_prep.synth", "--out", str(work / "heldout"), "--num-clips", str(args.heldout), "--seed",
       str(args.seed))
    sh("-m", "data_prep.make_shards", "--manifest", str(work / "heldout" / "metadata.jsonl"), "--out",
       str(work / "heldout_shards"), "--samples-per-shard", "16")
    sh("-m", "data_prep.tokenize", "--shards", str(work / "heldout_shards"), "--codec", str(args.prompts / "codec"),
       "--out", str(work / "heldout_tokens"), nproc=args.nproc)
    sh("-m", "data_prep.make_pairs", "--lm", str(args.base), "--trust-checkpoint", "--prompts", str(work / "heldout_tokens"), "--out",
       str(work / "heldout_pairs"), "--seed", "1", *ranked, nproc=args.nproc)
    sh("-m", "data_prep.ref_logprobs", "--lm", str(args.base), "--trust-checkpoint", "--pairs", str(work / "heldout_pairs"),
       nproc=args.nproc)

    frames = math.ceil(args.seconds * json.loads((args.prompts / "manifest.json").read_text())["frame_rate"])
    pairs = json.loads((work / "heldout_pairs" / "manifest.json").read_text())["num_samples"]
    # Whole batches only: the evaluation reader runs on into the next epoch, so a last partial
    # batch would count some pairs twice.
    eval_batches = max(1, pairs // BATCH)
    sh("-m", "aurora", "train", "configs/dpo/tiny.yaml", f"run.dir={work / 'dpo'}", f"model.init_from={args.base}",
       "run.trust_checkpoint=true",
       f"data.shards={work / 'pairs'}", f"data.eval_shards={work / 'heldout_pairs'}", f"data.context_frames={frames}",
       f"trainer.max_steps={args.steps}", f"trainer.checkpoint_every={args.steps}",
       f"trainer.eval_every={args.steps}", f"trainer.eval_batches={eval_batches}", f"data.batch_size={BATCH}",
       "generation.num_samples=0", nproc=args.nproc)

    meta = [json.loads(line) for line in (work / "heldout" / "metadata.jsonl").read_text().splitlines()]
    (work / "captions.txt").write_text("".join(m["text"] + "\n" for m in meta))
    fresh = {}
    for name, run in (("base", args.base), ("dpo", work / "dpo")):
        sh("-m", "aurora", "generate", str(run), "--trust-checkpoint", "--captions", str(work / "captions.txt"), "--out",
           str(work / f"samples_{name}"), "--max-seconds", str(args.seconds), "--seed", "100", "--batch-size", "16",
           nproc=args.nproc)
        fresh[name] = scores(work / f"samples_{name}", meta)

    metrics = [json.loads(line) for line in (work / "dpo" / "metrics.jsonl").read_text().splitlines()]
    evaluated = [m for m in metrics if "eval/rewards/accuracies" in m][-1]
    train = json.loads((work / "pairs" / "manifest.json").read_text())
    print(f"\nDPO gain: base {args.base}, {train['num_samples']} {args.mode} training pairs "
          f"(skipped {train['skipped'] or 'none'}), {args.steps} DPO steps, {pairs} held-out pairs, "
          f"{len(meta)} held-out captions")
    print(f"{'':34s} {'base':>14s} {'dpo':>14s}")
    print(f"{f'held-out preference accuracy ({eval_batches * BATCH} pairs)':34s} {'(chance 0.5)':>14s} "
          f"{evaluated['eval/rewards/accuracies']:14.3f}   (target >= {TARGET_ACCURACY})")
    (b, bci), (d, dci) = mean_ci(fresh["base"]), mean_ci(fresh["dpo"])
    print(f"{'caption match of fresh samples':34s} {b:7.3f} ± {bci:.3f} {d:7.3f} ± {dci:.3f}")
    gain, gci = mean_ci([y - x for x, y in zip(fresh["base"], fresh["dpo"])])
    print(f"{'paired difference (dpo - base)':34s} {'':14s} {gain:+7.3f} ± {gci:.3f}")
    print(f"final train loss {metrics[-1]['loss']:.4f}, rewards/accuracies {metrics[-1]['rewards/accuracies']:.3f}; "
          f"held-out eval/loss {evaluated['eval/loss']:.4f}, eval/rewards/margins {evaluated['eval/rewards/margins']:.4f}")


if __name__ == "__main__":
    main()
