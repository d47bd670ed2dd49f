"""DAC's own codec GAN train step, timed: the reference side of aurora's codec benchmark.

Runs INSIDE the DAC virtual environment (``.venv-dac``, made by ``tools/bench/dac_env.py``,
which also runs this file), never in aurora's: it imports ``dac`` (descript-audio-codec
1.0.0), ``audiotools`` (descript-audiotools 0.7.2) and torch, and nothing from aurora.

    .venv-dac/bin/python tools/bench/dac_reference.py [--json] [--device cpu|cuda] [--amp]
        [--batch 2] [--seconds 0.38] [--warmup 1] [--steps 3] [--threads N] [--seed 0]
        [--sample-rate 44100] [--encoder-dim 64] [--encoder-rates 2 4 8 8] [--latent-dim D]
        [--decoder-dim 1536] [--decoder-rates 8 8 4 2] [--n-codebooks 9]
        [--codebook-size 1024] [--codebook-dim 8] [--quantizer-dropout 1.0]
        [--periods 2 3 5 7 11] [--fft-sizes 2048 1024 512] [--msd-rates ...]
        [--bands 0.0,0.1 0.1,0.25 0.25,0.5 0.5,0.75 0.75,1.0]

The defaults are DAC's ``conf/base.yml`` (the 44.1 kHz model). What is built and run is what
DAC's ``scripts/train.py`` builds and runs with that config (the script is not in the wheel;
its ``load`` and ``train_loop`` are reproduced here line for line, minus the data pipeline,
the tracker and the checkpoints):

* ``dac.model.DAC(**model args)`` and ``dac.model.Discriminator(rates, periods, fft_sizes,
  sample_rate, bands)``; ``torch.optim.AdamW(lr=1e-4, betas=(0.8, 0.99))`` and
  ``ExponentialLR(gamma=0.999996)`` for each; ``torch.backends.cudnn.benchmark`` on (the
  script's default, ``CUDNN_BENCHMARK=1``).
* Losses: ``L1Loss()`` (waveform), ``MultiScaleSTFTLoss(window_lengths=[2048, 512])``,
  ``MelSpectrogramLoss(n_mels=[5, 10, 20, 40, 80, 160, 320], window_lengths=[32, 64, 128,
  256, 512, 1024, 2048], mel_fmin=[0]*7, mel_fmax=[None]*7, pow=1.0, clamp_eps=1e-5,
  mag_weight=0.0)``, ``GANLoss(discriminator)``; lambdas ``{mel/loss: 15, adv/feat_loss: 2,
  adv/gen_loss: 1, vq/commitment_loss: 0.25, vq/codebook_loss: 1}`` (stft/loss and
  waveform/loss are computed, as the script does, but carry no weight).
* One step (``train_step`` below): G forward once; D loss on ``recons.clone().detach()`` and
  the real signal; D zero_grad / backward / clip 10 / step / scheduler; then the G losses,
  whose ``gan_loss.generator_loss`` runs the discriminator AGAIN, already updated, on the
  (non-detached) reconstruction and on the real signal; G zero_grad / backward / clip 1000 /
  step / scheduler. The AMP plumbing is audiotools' ``ml.Accelerator``'s, as in the script:
  ``torch.cuda.amp.autocast(amp)``, one ``GradScaler`` for both optimizers (a no-op scaler
  without ``--amp``), ``scaler.unscale_`` before each clip, ``scaler.update()`` once a step.

Not reproduced: the data loader and its transforms (``VolumeNorm``, ``RescaleAudio``,
``ShiftPhase`` under ``no_grad``, off the model's step); instead one fixed random batch
[batch, 1, round(seconds * sample_rate)], drawn once with ``--seed``, lies on the device,
and every step wraps a clone of it in an ``AudioSignal`` (as the script's transform does).
One addition: with an odd rate (5, in the 16 and 24 kHz configs) DAC 1.0.0's decoder returns
8 samples fewer than it was given and the script's mel/waveform losses fail on the shapes
(DAC issue #42, open); the target is then cut to the reconstruction's length (reported as
``recons_samples`` < ``samples``). The 44.1 kHz config ([2, 4, 8, 8]) needs no cut.

DAC's sub-discriminators have hard-coded widths (``discriminator_widths`` in the output): MPD
convs 1->32->128->512->1024->1024 (kernels (5, 1), strides (3, 1) x4 then 1) and a 1024->1
(3, 1) post conv; MRD 2->32 then 32 channels x4 per band (kernels (3, 9) x4, (3, 3);
strides (1, 1), (1, 2) x3, (1, 1)) and a 32->1 (3, 3) post conv; all weight-normed, LeakyReLU
0.1. With base.yml (5 MPDs, 3 MRDs) that is 42.5 M parameters whatever the generator.

On CUDA use ``--warmup 3`` or more: DAC's Snake is ``torch.jit.script``-ed (its profiling
executor specialises after a few runs) and cudnn.benchmark tunes each new shape.

Timing: ``--warmup`` untimed steps, then ``--steps`` steps each timed with
``time.perf_counter`` around the whole step, the losses fetched to the host and, on CUDA,
``torch.cuda.synchronize()`` before the clock stops. With ``--json`` the last line of stdout
is one JSON object: median_step_s, audio_seconds_per_s (batch * seconds / median),
params_generator, params_discriminator, torch, dac, device, and more (see ``main``).
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

# Before torch starts its pools; dac_env.py sets it too.
if "--threads" in sys.argv:
    _t = sys.argv[sys.argv.index("--threads") + 1]
    os.environ.setdefault("OMP_NUM_THREADS", _t)
    os.environ.setdefault("MKL_NUM_THREADS", _t)

import torch  # noqa: E402

# scripts/train.py: "warnings.filterwarnings('ignore', category=UserWarning)"; torch 2.11 also
# warns (FutureWarning) about torch.cuda.amp.* and torch.nn.utils.weight_norm, which DAC uses.
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import dac  # noqa: E402
from audiotools import AudioSignal  # noqa: E402
from audiotools import ml  # noqa: E402
from audiotools.core import util  # noqa: E402
from dac.nn import loss as dac_loss  # noqa: E402

BASE_BANDS = [(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]

# conf/base.yml's lambdas (train()'s own default has mel/loss 100; the config sets 15).
LAMBDAS = {
    "mel/loss": 15.0,
    "adv/feat_loss": 2.0,
    "adv/gen_loss": 1.0,
    "vq/commitment_loss": 0.25,
    "vq/codebook_loss": 1.0,
}


def _band(text: str) -> tuple:
    lo, hi = (float(v) for v in text.split(","))
    return (lo, hi)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="last stdout line: the result as JSON")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="DAC's amp: torch.cuda.amp autocast + GradScaler (CUDA only)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=0.38, help="clip length (base.yml: 0.38)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    # DAC(...) -- conf/base.yml
    p.add_argument("--sample-rate", type=int, default=44100)
    p.add_argument("--encoder-dim", type=int, default=64)
    p.add_argument("--encoder-rates", type=int, nargs="+", default=[2, 4, 8, 8])
    p.add_argument("--latent-dim", type=int, default=None, help="default encoder_dim * 2**len(encoder_rates)")
    p.add_argument("--decoder-dim", type=int, default=1536)
    p.add_argument("--decoder-rates", type=int, nargs="+", default=[8, 8, 4, 2])
    p.add_argument("--n-codebooks", type=int, default=9)
    p.add_argument("--codebook-size", type=int, default=1024)
    p.add_argument("--codebook-dim", type=int, default=8)
    p.add_argument("--quantizer-dropout", type=float, default=1.0, help="base.yml 1.0; conf/final/* 0.5")
    # Discriminator(...) -- conf/base.yml
    p.add_argument("--periods", type=int, nargs="*", default=[2, 3, 5, 7, 11], help="MPD periods")
    p.add_argument("--fft-sizes", type=int, nargs="*", default=[2048, 1024, 512], help="MRD window lengths")
    p.add_argument("--msd-rates", type=int, nargs="*", default=[], help="Discriminator(rates=): MSD, off in base.yml")
    p.add_argument("--bands", type=_band, nargs="+", default=BASE_BANDS, help="MRD bands as lo,hi fractions")
    args = p.parse_args(argv)
    if args.amp and not args.device.startswith("cuda"):
        p.error("--amp is DAC's torch.cuda.amp autocast: CUDA only (no mixed precision on CPU)")
    return args


def build(args, device):
    """scripts/train.py's load(), with conf/base.yml's values (or the arguments' overrides)."""
    generator = dac.model.DAC(
        encoder_dim=args.encoder_dim,
        encoder_rates=list(args.encoder_rates),
        latent_dim=args.latent_dim,
        decoder_dim=args.decoder_dim,
        decoder_rates=list(args.decoder_rates),
        n_codebooks=args.n_codebooks,
        codebook_size=args.codebook_size,
        codebook_dim=args.codebook_dim,
        quantizer_dropout=args.quantizer_dropout,
        sample_rate=args.sample_rate,
    ).to(device)
    discriminator = dac.model.Discriminator(
        rates=list(args.msd_rates),
        periods=list(args.periods),
        fft_sizes=list(args.fft_sizes),
        sample_rate=args.sample_rate,
        bands=[list(b) for b in args.bands],
    ).to(device)

    optimizer_g = torch.optim.AdamW(generator.parameters(), lr=1e-4, betas=(0.8, 0.99))
    scheduler_g = torch.optim.lr_scheduler.ExponentialLR(optimizer_g, 0.999996)
    optimizer_d = torch.optim.AdamW(discriminator.parameters(), lr=1e-4, betas=(0.8, 0.99))
    scheduler_d = torch.optim.lr_scheduler.ExponentialLR(optimizer_d, 0.999996)

    waveform_loss = dac_loss.L1Loss()
    stft_loss = dac_loss.MultiScaleSTFTLoss(window_lengths=[2048, 512])
    mel_loss = dac_loss.MelSpectrogramLoss(
        n_mels=[5, 10, 20, 40, 80, 160, 320],
        window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
        mel_fmin=[0, 0, 0, 0, 0, 0, 0],
        mel_fmax=[None, None, None, None, None, None, None],
        pow=1.0,
        clamp_eps=1.0e-5,
        mag_weight=0.0,
    )
    gan_loss = dac_loss.GANLoss(discriminator)
    return dict(
        generator=generator,
        optimizer_g=optimizer_g,
        scheduler_g=scheduler_g,
        discriminator=discriminator,
        optimizer_d=optimizer_d,
        scheduler_d=scheduler_d,
        waveform_loss=waveform_loss,
        stft_loss=stft_loss,
        mel_loss=mel_loss,
        gan_loss=gan_loss,
    )


def train_step(state, audio, sample_rate, accel, lambdas=LAMBDAS):
    """scripts/train.py's train_loop, statement for statement (batch = a clone of `audio`)."""
    state["generator"].train()
    state["discriminator"].train()
    output = {}

    with torch.no_grad():
        signal = AudioSignal(audio.clone(), sample_rate)

    with accel.autocast():
        out = state["generator"](signal.audio_data, signal.sample_rate)
        recons = AudioSignal(out["audio"], signal.sample_rate)
        commitment_loss = out["vq/commitment_loss"]
        codebook_loss = out["vq/codebook_loss"]

    if recons.signal_length < signal.signal_length:
        # Not in train.py: with an odd rate (5 in the 16 kHz config) DAC 1.0.0's decoder returns
        # a few samples fewer than it was given (8 for [8, 5, 4, 2]) and the script's mel and
        # waveform losses then fail on the shape (DAC issue #42, open). The usual workaround:
        # compare against the target cut to the reconstruction's length.
        with torch.no_grad():
            signal = AudioSignal(signal.audio_data[..., : recons.signal_length], signal.sample_rate)

    with accel.autocast():
        output["adv/disc_loss"] = state["gan_loss"].discriminator_loss(recons, signal)

    state["optimizer_d"].zero_grad()
    accel.backward(output["adv/disc_loss"])
    accel.scaler.unscale_(state["optimizer_d"])
    output["other/grad_norm_d"] = torch.nn.utils.clip_grad_norm_(state["discriminator"].parameters(), 10.0)
    accel.step(state["optimizer_d"])
    state["scheduler_d"].step()

    with accel.autocast():
        output["stft/loss"] = state["stft_loss"](recons, signal)
        output["mel/loss"] = state["mel_loss"](recons, signal)
        output["waveform/loss"] = state["waveform_loss"](recons, signal)
        (
            output["adv/gen_loss"],
            output["adv/feat_loss"],
        ) = state["gan_loss"].generator_loss(recons, signal)
        output["vq/commitment_loss"] = commitment_loss
        output["vq/codebook_loss"] = codebook_loss
        output["loss"] = sum([v * output[k] for k, v in lambdas.items() if k in output])

    state["optimizer_g"].zero_grad()
    accel.backward(output["loss"])
    accel.scaler.unscale_(state["optimizer_g"])
    output["other/grad_norm"] = torch.nn.utils.clip_grad_norm_(state["generator"].parameters(), 1e3)
    accel.step(state["optimizer_g"])
    state["scheduler_g"].step()
    accel.update()
    output["other/recons_samples"] = recons.signal_length
    return output


def discriminator_widths(discriminator) -> dict:
    """The channel widths DAC hard-codes in its sub-discriminators (read off the built modules)."""
    widths = {}
    for d in discriminator.discriminators:
        name = type(d).__name__
        if name == "MPD":
            convs = [layer[0] for layer in d.convs]
            widths["mpd_channels"] = [c.out_channels for c in convs]
            widths["mpd_kernels"] = [list(c.kernel_size) for c in convs]
            widths["mpd_strides"] = [list(c.stride) for c in convs]
        elif name == "MRD":
            convs = [layer[0] for layer in d.band_convs[0]]
            widths["mrd_channels"] = [c.out_channels for c in convs]
            widths["mrd_kernels"] = [list(c.kernel_size) for c in convs]
            widths["mrd_strides"] = [list(c.stride) for c in convs]
        elif name == "MSD":
            widths["msd_channels"] = [layer[0].out_channels for layer in d.convs]
    return widths


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # scripts/train.py: cudnn autotuner on unless CUDNN_BENCHMARK=0.
    torch.backends.cudnn.benchmark = bool(int(os.getenv("CUDNN_BENCHMARK", 1)))
    util.seed(args.seed)  # train(): random, numpy, torch

    # ml.Accelerator(amp) supplies the script's autocast/scaler; it builds DDP only under torchrun
    # with several GPUs, which this single-process benchmark never wants.
    os.environ.pop("LOCAL_RANK", None)
    accel = ml.Accelerator(amp=args.amp)

    state = build(args, device)
    n_samples = int(round(args.seconds * args.sample_rate))
    g = torch.Generator().manual_seed(args.seed)
    audio = (0.1 * torch.randn(args.batch, 1, n_samples, generator=g)).clamp_(-1, 1).to(device)

    def timed_step():
        t0 = time.perf_counter()
        out = train_step(state, audio, args.sample_rate, accel)
        losses = {k: float(v) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        losses["other/recons_samples"] = out["other/recons_samples"]
        return dt, losses

    for _ in range(args.warmup):
        timed_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], {}
    for _ in range(args.steps):
        dt, losses = timed_step()
        times.append(dt)
        if not args.json:
            print(f"step {len(times)}: {dt:.3f} s  loss {losses['loss']:.4f}", flush=True)

    median = statistics.median(times)
    gen = state["generator"]
    result = {
        "median_step_s": median,
        "audio_seconds_per_s": args.batch * args.seconds / median,
        "params_generator": n_params(gen),
        "params_discriminator": n_params(state["discriminator"]),
        "torch": torch.__version__,
        "dac": dac.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "step_times_s": times,
        "batch": args.batch,
        "seconds": args.seconds,
        "samples": n_samples,
        # < samples where DAC's decoder comes out short (odd rates); the target is then cut to it.
        "recons_samples": losses.get("other/recons_samples", n_samples),
        "sample_rate": args.sample_rate,
        "hop_length": int(gen.hop_length),
        "latent_dim": gen.latent_dim,
        "amp": args.amp,
        "threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "steps": args.steps,
        "last_losses": losses,
        "discriminator_widths": discriminator_widths(state["discriminator"]),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if not args.json:
        print(
            f"DAC {result['dac']} torch {result['torch']} on {result['device']}: median step "
            f"{median:.3f} s, {result['audio_seconds_per_s']:.2f} audio s/s; generator "
            f"{result['params_generator'] / 1e6:.2f} M params, discriminator "
            f"{result['params_discriminator'] / 1e6:.2f} M"
        )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
