"""Few-step quality and speed of the LCM student against its diffusion teacher, on the synthetic corpus.

    python -m tools.bench.lcm_quality [--codec CODEC] [--work runs/lcm_quality] [--clips 256]
        [--heldout 32] [--teacher-steps 600] [--student-steps 300] [--seconds 1] [--cfg-scale 4]

1. Data: ``--clips`` synthetic clips (corpus seed 0) and ``--heldout`` others (seed 1), sharded
   and encoded to latent shards (``data_prep.tokenize --latents``) with the codec ``--codec`` (an
   exported codec or a trusted run; without one, ``configs/codec/tiny.yaml`` is trained for
   ``--codec-steps`` first).
2. Training: the teacher (``configs/diffusion/tiny.yaml``) for ``--teacher-steps``, then the
   student (``configs/lcm/tiny.yaml``, from it) for ``--student-steps``; the same batch size and
   crops. Training cost: the median step time of each (a student step runs the student, the
   teacher twice over (CFG) and the EMA target, forward only but for the student).
3. Rows, each sampling every held-out caption once (the same seeds for every row): the teacher
   at 50 steps (DDIM, CFG ``--cfg-scale``) and at 2, the student at 1, 2 and 4 steps (guidance
   ``--cfg-scale``). Columns:
   - FD: the Fréchet distance between the generated latents and the held-out clips' latents,
     pooled over time (aurora.metrics.frechet: the codec encoder's space; lower is better);
   - caption match of the decoded clips against their captions' kind and pitch
     (aurora.metrics.caption_match; higher is better), mean ± 95% interval;
   - RTF: seconds of audio generated per second of sampling wall time, the latents alone (the
     DiT's steps) and with the codec's decoder (RTF+dec), every caption in one batch, and each
     row's sampling speed against the 50-step teacher's measured in this run.

Targets (issue 14): the 2-step student within 10% of the 50-step teacher on both metrics and
better than the 2-step teacher; at 2 steps at least 20x the 50-step teacher's speed.
"""

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import soundfile as sf
import torch

from aurora.data.latents import LatentExamples
from aurora.data.manifest import read_manifest
from aurora.data.tars import read_shard
from aurora.latent_generation import LatentSampler, check_settings
from aurora.metrics.caption_match import caption_match
from aurora.metrics.frechet import frechet_distance, pooled_latents
from tools.bench.dpo_gain import mean_ci, sh

ROWS = [("teacher", 50), ("teacher", 2), ("student", 1), ("student", 2), ("student", 4)]


def real_embeddings(latents_dir: Path) -> torch.Tensor:
    """Pooled latents [N, latent_dim] of every clip of a latent shard set."""
    manifest = read_manifest(latents_dir)
    examples = LatentExamples(manifest["latent_dim"], context_frames=10**6)
    pooled = []
    for shard in manifest["shards"]:
        for sample in read_shard(str(latents_dir / shard["name"]), lambda *a: None):
            pooled.append(pooled_latents(examples.decode(sample, None)["latents"][None])[0])
    return torch.stack(pooled)


def timed(fn, device: torch.device):
    """fn()'s result and its wall time in seconds (the device's queue drained on both sides)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - started


def median_step_s(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return statistics.median(m["step_time_s"] for m in lines[1:] if "step_time_s" in m)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec", type=Path, help="an exported codec, or a codec run (trusted); default: train one")
    parser.add_argument("--codec-steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("runs/lcm_quality"))
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length: training crops and samples")
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--nproc", type=int, default=1)
    args = parser.parse_args(argv)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name, clips, seed in (("train", args.clips, 0), ("heldout", args.heldout, 1)):
        sh("-m", "data_prep.synth", "--out", str(work / name), "--num-clips", str(clips), "--seed", str(seed),
           "--min-seconds", str(args.seconds), "--max-seconds", str(2 * args.seconds))
        sh("-m", "data_prep.make_shards", "--manifest", str(work / name / "metadata.jsonl"), "--out",
           str(work / f"{name}_shards"), "--samples-per-shard", "64")
    codec = args.codec
    if codec is None:
        codec = work / "codec"
        sh("-m", "aurora", "train", "configs/codec/tiny.yaml", f"run.dir={codec}", f"data.shards={work / 'train_shards'}",
           f"trainer.max_steps={args.codec_steps}", f"trainer.checkpoint_every={args.codec_steps}",
           "trainer.progress_bar=false", "eval_clips=0", nproc=args.nproc)
    for name in ("train", "heldout"):
        sh("-m", "data_prep.tokenize", "--shards", str(work / f"{name}_shards"), "--codec", str(codec),
           "--trust-checkpoint", "--out", str(work / f"{name}_latents"), "--latents", nproc=args.nproc)
    manifest = read_manifest(work / "train_latents")
    frames = round(args.seconds * manifest["frame_rate"])
    common = [f"data.shards={work / 'train_latents'}", f"model.latent_dim={manifest['latent_dim']}",
              f"data.context_frames={frames}", "trainer.progress_bar=false", "trainer.log_every=1"]
    sh("-m", "aurora", "train", "configs/diffusion/tiny.yaml", f"run.dir={work / 'teacher'}",
       f"trainer.max_steps={args.teacher_steps}", f"trainer.checkpoint_every={args.teacher_steps}", *common,
       nproc=args.nproc)
    sh("-m", "aurora", "train", "configs/lcm/tiny.yaml", f"run.dir={work / 'student'}",
       f"model.teacher={work / 'teacher'}", f"trainer.max_steps={args.student_steps}",
       f"trainer.checkpoint_every={args.student_steps}", *common, nproc=args.nproc)

    meta = [json.loads(line) for line in (work / "heldout" / "metadata.jsonl").read_text().splitlines()]
    captions, seeds = [m["text"] for m in meta], list(range(100, 100 + len(meta)))
    real = real_embeddings(work / "heldout_latents")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_grad_enabled(False)
    samplers = {name: LatentSampler(work / name, device, trust=True) for name in ("teacher", "student")}
    results = []
    for name, steps in ROWS:
        sampler = samplers[name]
        settings = check_settings(sampler.cfg, steps, args.cfg_scale, None, args.seconds)
        sampler.sample(captions[:2], seeds[:2], settings)  # warm-up
        latents, sampling_s = timed(lambda: sampler.latents(captions, seeds, settings), device)
        audio, decode_s = timed(lambda: sampler.codec.decode_latents(latents).float(), device)
        latents, audio = latents.cpu(), audio.cpu()
        rate = sampler.codec.cfg.sample_rate
        out = work / f"samples_{name}_{steps}"
        out.mkdir()
        for i, clip in enumerate(audio[:, 0]):
            sf.write(out / f"sample_{i:05d}.flac", clip.clamp(-1, 1).numpy(), rate)
        match = mean_ci([caption_match(clip, rate, params) for clip, params in zip(audio[:, 0], meta)])
        results.append({"model": name, "steps": steps, "fd": frechet_distance(pooled_latents(latents), real),
                        "match": match, "seconds": audio.shape[-1] * len(captions) / rate, "sampling_s": sampling_s,
                        "decode_s": decode_s})

    base = results[0]
    print(f"\nLCM quality: {args.clips} training clips, {len(meta)} held-out captions, {args.seconds:g} s clips, "
          f"teacher {args.teacher_steps} steps, student {args.student_steps} steps, guidance {args.cfg_scale:g}, "
          f"{device.type}")
    print(f"{'model':8s} {'steps':>5s} {'FD':>9s} {'FD/T50':>7s} {'caption match':>16s} {'match/T50':>9s} "
          f"{'RTF':>9s} {'RTF+dec':>9s} {'speed/T50':>9s}")
    for r in results:
        m, ci = r["match"]
        speed = base["sampling_s"] / r["sampling_s"]
        print(f"{r['model']:8s} {r['steps']:5d} {r['fd']:9.3f} {r['fd'] / base['fd']:7.2f} {m:9.3f} ± {ci:.3f} "
              f"{m / max(base['match'][0], 1e-9):9.2f} {r['seconds'] / r['sampling_s']:9.1f} "
              f"{r['seconds'] / (r['sampling_s'] + r['decode_s']):9.1f} {speed:8.1f}x")
    print("RTF: audio seconds per second of sampling the latents; RTF+dec: with the codec's decoder; speed/T50: "
          "sampling time of the 50-step teacher over this row's")
    teacher_s, student_s = median_step_s(work / "teacher"), median_step_s(work / "student")
    print(f"training cost: median step {teacher_s * 1e3:.1f} ms (teacher) vs {student_s * 1e3:.1f} ms (student): "
          f"a student step costs {student_s / teacher_s:.2f}x a teacher step")


if __name__ == "__main__":
    main()
