"""The codec GAN train step against the reference implementation (descript-audio-codec), in one run.

    python -m tools.bench.codec_step [--config configs/codec/tiny.yaml] [--batch 4] [--seconds 0.38]
        [--steps 3] [--blocks 3] [--warmup 2] [--threads N] [--device cpu|cuda] [--bf16]
        [--variants compile] [--no-reference] [key=value ...]

Both sides train the same architecture on the same batch shape and device, one full step each
(generator forward; discriminator loss, backward, clip, step; generator losses through the
updated discriminator, backward, clip, step): aurora through its real ``Trainer.train_step``
(engine, loop, optimizers, schedules, dead-code bookkeeping) in this process, DAC through its
own model, discriminator, losses and train loop (``tools/bench/dac_reference.py``) in a
virtual environment of its own (``.venv-dac``, made on first use by ``tools/bench/dac_env.py``:
DAC pins packages that break aurora's). The architecture comes from an aurora codec config and
its overrides; DAC fixes what aurora makes configurable, so the config must match it: 3
residual units per block, Snake, no context blocks, discriminator width 32 (the defaults below
set them). The mel loss is DAC's seven scales on both sides.

Timing: ``--warmup`` untimed steps per side, then ``--blocks`` rounds of ``--steps`` timed
steps of aurora and then of DAC (a fresh DAC process per round), so a slow spell of this noisy
machine hits both sides alike. The table gives each row's median step, seconds of audio
trained per second, and its ratio to DAC's; ``--variants compile`` adds aurora with
``engine.compile=true``.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from aurora.config import load_config
from aurora.distributed import init_distributed
from aurora.tasks.codec import CodecTask, CodecTrainConfig
from aurora.train.loop import Trainer
from data_prep import make_shards, synth
from tools.bench.dac_env import ensure_dac_venv, run_dac_step
from tools.bench.engines import shared_workspace

DAC_SHAPE = ["model.residual_units=3", "model.activation=snake", "model.context_blocks=0", "discriminator.channels=32",
             "loss.mel_n_ffts=[32,64,128,256,512,1024,2048]", "loss.mel_n_mels=[5,10,20,40,80,160,320]",
             "loss.waveform_weight=0", "loss.balancer=false", "gan.start_step=0", "trainer.grad_accum_steps=1",
             "engine.name=ddp"]
"""What DAC's architecture and recipe fix (aurora's side is configured to match)."""
SMALL = ["model.channels=16", "model.strides=[2,4,8,8]", "model.latent_dim=128", "model.decoder_channels=192", "model.n_q=4",
         "model.codebook_size=1024", "data.sample_rate=16000", "model.sample_rate=16000"]
"""The default: DAC 44.1 kHz's layout (strides 2, 4, 8, 8; DAC 1.0.0 mis-sizes odd strides) at a quarter of its
generator widths and 16 kHz, small enough for a 2-core CPU."""
VARIANTS = {"compile": ["engine.compile=true"]}


def dac_args(cfg: CodecTrainConfig) -> dict:
    """DAC's constructor arguments for aurora's codec and discriminator config."""
    m, d = cfg.model, cfg.discriminator
    return {"sample_rate": m.sample_rate, "encoder_dim": m.channels, "encoder_rates": list(m.strides),
            "latent_dim": m.latent_dim, "decoder_dim": m.decoder_channels or m.channels * 2 ** len(m.strides),
            "decoder_rates": list(reversed(m.strides)), "n_codebooks": m.n_q, "codebook_size": m.codebook_size,
            "codebook_dim": m.codebook_dim, "quantizer_dropout": m.quantizer_dropout,
            "periods": list(d.periods), "fft_sizes": list(d.fft_sizes), "bands": [list(b) for b in d.bands]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/codec/tiny.yaml", help="an aurora codec config")
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--seconds", type=float, default=0.38, help="clip length (DAC: 0.38)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and block")
    parser.add_argument("--blocks", type=int, default=3, help="rounds over both sides")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="aurora bf16 autocast; DAC its own amp (CUDA only)")
    parser.add_argument("--variants", default="", help=f"extra aurora rows: subset of {','.join(VARIANTS)}")
    parser.add_argument("--no-reference", action="store_true", help="aurora rows only (no DAC environment)")
    parser.add_argument("--dac-venv", default=".venv-dac", help="where the DAC environment lives")
    parser.add_argument("overrides", nargs="*", help="aurora config overrides, key=value (after the defaults)")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if unknown := sorted(set(args.variants) - set(VARIANTS)):
        parser.error(f"unknown variants {unknown}; known: {','.join(VARIANTS)}")
    if min(args.steps, args.blocks, args.batch) < 1 or args.warmup < 0 or args.seconds <= 0:
        parser.error("--steps, --blocks and --batch must be >= 1, --warmup >= 0, --seconds > 0")
    if args.bf16 and args.device != "cuda" and not args.no_reference:
        parser.error("--bf16 with the DAC reference needs --device cuda (DAC's amp is CUDA autocast); "
                     "add --no-reference for aurora's rows alone")
    return args


def fixed_batch(cfg: CodecTrainConfig, batch: int, seconds: float, device: str) -> dict:
    """One random batch, the same shape and scale as DAC's side draws."""
    samples = round(seconds * cfg.model.sample_rate)
    audio = 0.5 * torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    return {"audio": audio.to(device), "lengths": torch.full((batch,), samples, device=device),
            "keys": [f"k{i}" for i in range(batch)], "text": [""] * batch}


def time_steps(trainer: Trainer, batch: dict, count: int, device: str) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        trainer.train_step(iter([batch]))
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = [*SMALL, *DAC_SHAPE, "trainer.progress_bar=false", "data.num_workers=0", f"data.batch_size={args.batch}",
            f"engine.precision={'bf16' if args.bf16 else 'fp32'}", *args.overrides]
    cfg = load_config(CodecTrainConfig, args.config, base)
    rows = {"aurora": [], **{f"aurora+{v}": VARIANTS[v] for v in args.variants}}
    env = init_distributed(cfg.dist)
    python = None if args.no_reference else ensure_dac_venv(Path(args.dac_venv))
    with shared_workspace(env) as tmp:
        # The Trainer's loader needs shards to exist; it is never iterated (batches are fixed).
        synth.main(["--out", str(tmp / "corpus"), "--num-clips", "2", "--sample-rate", str(cfg.model.sample_rate)])
        make_shards.main(["--manifest", str(tmp / "corpus" / "metadata.jsonl"), "--out", str(tmp / "shards")])
        trainers = {name: Trainer(load_config(CodecTrainConfig, args.config, base + [f"run.dir={tmp / name}",
                                              f"data.shards={tmp / 'shards'}", *extra]), CodecTask, env)
                    for name, extra in rows.items()}
        batch = fixed_batch(cfg, args.batch, args.seconds, env.device.type)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        reference: list[dict] = []
        for trainer in trainers.values():
            time_steps(trainer, batch, args.warmup, env.device.type)
        for _ in range(args.blocks):
            for name, trainer in trainers.items():
                times[name] += time_steps(trainer, batch, args.steps, env.device.type)
            if python is not None:
                reference.append(run_dac_step(python, dac_args(cfg), args.batch, args.seconds, args.steps,
                                              args.warmup, args.threads, args.device, amp=args.bf16))
        params = {name: sum(p.numel() for p in part.model.parameters()) for name, part in
                  ((p.name, p) for p in trainers["aurora"].parts)}
    audio = args.batch * args.seconds
    print(f"codec step: {env.device.type}, {args.threads} thread(s), batch {args.batch} x {args.seconds} s at "
          f"{cfg.model.sample_rate} Hz, {args.blocks} blocks x {args.steps} steps after {args.warmup} warm-up, "
          f"torch {torch.__version__}, precision {'bf16' if args.bf16 else 'fp32'}")
    print(f"aurora: generator {params['model'] / 1e6:.2f} M, discriminator {params['discriminator'] / 1e6:.2f} M "
          f"parameters; overrides: {' '.join(args.overrides) or 'none'}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    if reference:
        medians["dac"] = statistics.median(r["median_step_s"] for r in reference)
        print(f"dac {reference[0]['dac']}: generator {reference[0]['params_generator'] / 1e6:.2f} M, discriminator "
              f"{reference[0]['params_discriminator'] / 1e6:.2f} M parameters (torch {reference[0]['torch']})")
    print(f"{'row':<16} {'s/step':>8} {'audio s/s':>10} {'vs dac':>7}")
    for name, median in medians.items():
        ratio = f"{medians['dac'] / median:7.3f}" if "dac" in medians else "      -"
        print(f"{name:<16} {median:8.3f} {audio / median:10.3f} {ratio}")


if __name__ == "__main__":
    main()
