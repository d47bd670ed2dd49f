"""Sampling clips from a trained audio LM run: ``aurora generate`` and the end-of-training samples.

    aurora generate LM --caption "a low tone" [--caption ...] | --captions FILE
                    [--num-samples N] --out DIR [--cfg-scale 3] [--temperature 1] [--top-k 50]
                    [--top-p 1] [--max-seconds 2] [--seed 0] [--step N] [--batch-size 8]
                    [--trust-checkpoint]

LM is an exported LM (``export_lm``: ``model.safetensors`` + ``config.json``, its codec in
``codec/``) or, with ``--trust-checkpoint`` only, an LM training run (a run's checkpoint files
are pickles, which can run code when read: ``aurora.exported``).

Prompt i (each caption repeated ``--num-samples`` times, in order) is sampled with its own
generator seeded ``seed + i``, and prompts are batched in that order, ``--batch-size`` at a time;
under torchrun rank r takes batches r, r + world, ... So any launch writes the same files as one
process, and ``--seed S+i`` with prompt i's caption alone reproduces sample i. The LM has no
end token: every clip is ``--max-seconds`` long. Tokens decode with the LM's codec: an export's
``codec/``, or the one a run's token shards' manifest names (the one that made them).

Output in DIR: ``sample_{i:05d}.flac``, ``sample_{i:05d}.codes.npy`` (int16 [n_q, frames]) and
``samples.jsonl`` (one line per sample: files, caption, seed, frames and the settings).
"""

import argparse
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from aurora.config import ConfigError, peek_task
from aurora.data.manifest import resolve_shards
from aurora.exported import ModelKind, ModelLoadError, export_model, is_exported, load_model, read_config, run_of
from aurora.models.audio_lm import AudioLM, AudioLMConfig, encode_text
from aurora.precision import bf16_autocast


@dataclass
class SamplingSettings:
    seconds: float = 2.0
    """Length of each clip."""
    temperature: float = 1.0
    """Softmax temperature (0: greedy)."""
    top_k: int = 50
    """Sample among the k most likely codes (0: all, 1: greedy)."""
    top_p: float = 1.0
    """Sample among the most likely codes whose probability reaches top_p (1: all)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance: 1 conditional, 0 unconditional, > 1 guided."""


def _lm_run_config(run: Path) -> AudioLMConfig:
    try:
        return load_lm_config(run).model
    except (ConfigError, FileNotFoundError) as e:
        raise ModelLoadError(str(e)) from None


LM = ModelKind("audio_lm", AudioLMConfig, AudioLM, lambda lm: lm.config, _lm_run_config)
LM_CODEC_DIR = "codec"
"""The sub-folder of an exported LM holding the codec of its tokens."""


def export_lm(lm: AudioLM, codec: nn.Module, out_dir: str | Path) -> None:
    """An exported LM folder (``aurora.exported``), its codec in ``codec/``: all that sampling needs."""
    from aurora.tasks.codec.load import CODEC

    export_model(lm, LM, out_dir, beside={LM_CODEC_DIR: (codec, CODEC)})


def lm_codec_dir(path: Path) -> Path:
    """The exported codec of the LM at ``path``: an export's ``codec/``, or the one its run's
    token shards' manifest names (read ``path`` only once trusted: ``aurora.exported``)."""
    if is_exported(path):
        return path / LM_CODEC_DIR
    run = load_lm_config(run_of(path))
    _, manifest = resolve_shards(run.data.shards)
    if manifest is None or not manifest.get("codec"):
        raise ConfigError(f"{path} trained on {run.data.shards}, whose manifest names no codec to decode "
                          "its tokens with: tokenize the audio with data_prep.tokenize, which records the codec")
    return Path(run.data.shards) / manifest["codec"]


class LMSampler:
    """An LM (``aurora.exported.load_model``: an export, or a run only if ``trust``) and the codec
    of its tokens, on ``device`` (bf16 autocast on a GPU)."""

    member, dtype = "codes", np.int16
    """What ``write_samples`` stores beside each clip, and as what."""

    def __init__(self, path: str | Path, device: torch.device, step: int | None = None, *, trust: bool,
                 what: str = "LM"):
        from aurora.tasks.codec.load import load_codec

        loaded = load_model(path, LM, trust=trust, what=what, step=step)
        self.config: AudioLMConfig = loaded.config
        self.checkpoint = loaded.checkpoint or Path(path)
        self.lm = loaded.model.to(device).eval()
        self.codec = load_codec(lm_codec_dir(Path(path)), what=f"{what}'s codec").codec.to(device)
        self.frame_rate = self.codec.cfg.frame_rate
        self.device = device

    def text_tokens(self, captions: list[str]) -> torch.Tensor:
        """Captions as the LM's text tokens; one too long for ``model.max_text_len`` is refused."""
        check_captions(captions, self.config.max_text_len)
        return encode_text(captions, self.config.max_text_len).to(self.device)

    @torch.no_grad()
    def sample(self, captions: list[str], seeds: list[int], settings: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [B, n_q, frames] and audio [B, 1, samples] (on the CPU) for one batch."""
        generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        frames = max(1, round(settings.seconds * self.frame_rate))
        with bf16_autocast(self.device.type, enabled=self.device.type == "cuda"):
            codes = self.lm.generate(self.text_tokens(captions), frames, settings.temperature, settings.top_k,
                                     settings.top_p, settings.cfg_scale, generators)
        audio = self.codec.decode(codes).float()
        return codes.cpu(), audio.cpu()


def check_captions(captions: list[str], max_text_len: int) -> None:
    """ConfigError naming the first caption longer than an LM with ``max_text_len`` reads."""
    limit = max_text_len - 2  # BOS and SEP
    for caption in captions:
        size = len(caption.encode("utf-8"))
        if size > limit:
            raise ConfigError(f"caption {caption[:40]!r}... is {size} bytes; this LM reads at most {limit} "
                              f"(model.max_text_len={max_text_len}): shorten it")


def load_lm_config(run_dir: Path):
    """The config of an audio LM run (task lm, or a recipe that trains one, such as dpo)."""
    from aurora.tasks import run_config
    from aurora.tasks.lm import LMTrainConfig

    return run_config(run_dir, LMTrainConfig, "an audio LM run (task: lm or dpo): captions are sampled from an LM; "
                                             "a codec decodes tokens, it takes no caption")


def my_batches(num_prompts: int, batch_size: int, rank: int, world_size: int) -> list[range]:
    """The prompt indices of this rank's batches: batch j holds prompts [j*b, (j+1)*b), and rank
    r takes batches r, r + world_size, ..."""
    starts = range(rank * batch_size, num_prompts, world_size * batch_size)
    return [range(start, min(start + batch_size, num_prompts)) for start in starts]


def write_samples(sampler, captions: list[str], seed: int, settings, out_dir: Path,
                  batch_size: int, rank: int = 0, world_size: int = 1) -> list[dict]:
    """Sample and write this rank's share of ``captions`` (prompt i seeded ``seed + i``) into
    ``out_dir`` with ``sampler`` (an ``LMSampler``, or ``aurora.latent_generation.LatentSampler``)
    and its settings (a dataclass, recorded with each sample); the records of the samples written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rank_records(out_dir, rank, world_size).unlink(missing_ok=True)  # an interrupted run's
    records = []
    for indices in my_batches(len(captions), batch_size, rank, world_size):
        batch = [captions[i] for i in indices]
        codes, audio = sampler.sample(batch, [seed + i for i in indices], settings)
        for row, i in enumerate(indices):
            name = f"sample_{i:05d}"
            sf.write(out_dir / f"{name}.flac", audio[row, 0].clamp(-1, 1).numpy(), sampler.codec.cfg.sample_rate)
            np.save(out_dir / f"{name}.{sampler.member}.npy", codes[row].numpy().astype(sampler.dtype))
            records.append({"index": i, "file": f"{name}.flac", sampler.member: f"{name}.{sampler.member}.npy",
                            "caption": batch[row], "seed": seed + i, "frames": codes.shape[-1],
                            "checkpoint": str(sampler.checkpoint),
                            **{f.name: getattr(settings, f.name) for f in fields(settings)}})
    return records


RANK_RECORDS = ".records.{rank}-of-{world}.jsonl"
"""One rank's sample records in the output directory, until ``write_index`` merges them."""


def rank_records(out_dir: Path, rank: int, world_size: int) -> Path:
    return out_dir / RANK_RECORDS.format(rank=rank, world=world_size)


def write_rank_records(out_dir: Path, records: list[dict], rank: int, world_size: int) -> None:
    """This rank's records, for ``write_index`` (a file, not a collective: a rank that failed to
    sample leaves no file rather than the others waiting for it)."""
    path = rank_records(out_dir, rank, world_size)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(tmp, path)


def write_index(out_dir: Path, world_size: int) -> int:
    """Merge the records of every rank of ``world_size`` into ``out_dir/samples.jsonl`` (by
    prompt index); how many."""
    parts = [path for rank in range(world_size) if (path := rank_records(out_dir, rank, world_size)).is_file()]
    records = [json.loads(line) for part in parts for line in part.read_text().splitlines() if line]
    with open(out_dir / "samples.jsonl", "w") as index:
        for record in sorted(records, key=lambda r: r["index"]):
            index.write(json.dumps(record) + "\n")
    for part in parts:
        part.unlink()
    return len(records)


LATENT_TASKS = ("diffusion", "lcm")
"""Recipes whose runs ``aurora.latent_generation`` samples."""


def latent_run(path: Path) -> bool:
    """Whether ``path`` is a diffusion or LCM run or checkpoint (its config.yaml is plain YAML: safe to read)."""
    config = run_of(Path(path)) / "config.yaml"
    return config.is_file() and peek_task(config) in LATENT_TASKS


def _captions(args: argparse.Namespace) -> list[str]:
    captions = list(args.caption or [])
    if args.captions:
        captions += [line.strip() for line in Path(args.captions).read_text().splitlines() if line.strip()]
    if not captions:
        raise ConfigError("no caption: give --caption TEXT (repeatable) or --captions FILE (one per line)")
    return [c for c in captions for _ in range(args.num_samples)]


def add_generate_parser(commands) -> None:
    gen = commands.add_parser("generate", help="sample audio from an LM, a diffusion teacher or an LCM student")
    gen.add_argument("run", type=Path, metavar="RUN",
                     help="an exported LM folder, or (with --trust-checkpoint) an LM, diffusion or LCM training run "
                          "directory (aurora.latent_generation)")
    gen.add_argument("--caption", action="append", help="a caption to sample (repeatable)")
    gen.add_argument("--captions", type=Path, help="a file of captions, one per line")
    gen.add_argument("--num-samples", type=int, default=1, help="samples per caption")
    gen.add_argument("--out", type=Path, required=True, help="output directory")
    defaults = SamplingSettings()
    gen.add_argument("--cfg-scale", type=float, default=None,
                     help=f"classifier-free guidance (LM default {defaults.cfg_scale:g}; diffusion: see "
                          f"aurora.latent_generation)")
    gen.add_argument("--steps", type=int, help="diffusion and LCM runs: sampling steps (teacher 50, student 2)")
    gen.add_argument("--sampler", help="diffusion runs: ddim (default) or dpm (DPM-Solver++)")
    gen.add_argument("--temperature", type=float, default=defaults.temperature)
    gen.add_argument("--top-k", type=int, default=defaults.top_k)
    gen.add_argument("--top-p", type=float, default=defaults.top_p)
    gen.add_argument("--max-seconds", type=float, default=defaults.seconds, help="length of every clip")
    gen.add_argument("--seed", type=int, default=0, help="prompt i is sampled with seed + i")
    gen.add_argument("--step", type=int, help="the checkpoint of this step (default: the latest)")
    gen.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    gen.add_argument("--trust-checkpoint", action="store_true",
                     help="read LM even if it is a training run: its checkpoint files are pickles, which can run "
                          "code; only for runs you made or trust")
    gen.set_defaults(func=generate_command)


def generate_command(args: argparse.Namespace) -> None:
    from aurora.config.schema import DistConfig
    from aurora.distributed import barrier, init_distributed, shutdown

    captions = _captions(args)
    # A wrong or untrusted model, setting or caption is refused before any process group forms.
    if is_exported(args.run) or not latent_run(args.run):
        if args.steps is not None or args.sampler is not None:
            raise ConfigError("--steps and --sampler are for diffusion and LCM runs: an LM samples its tokens one "
                              "frame at a time; drop them")
        cfg_scale = SamplingSettings.cfg_scale if args.cfg_scale is None else args.cfg_scale
        settings = SamplingSettings(args.max_seconds, args.temperature, args.top_k, args.top_p, cfg_scale)
        config = read_config(args.run, LM, trust=args.trust_checkpoint, what="LM")
        check_captions(captions, config.max_text_len)
        make_sampler = LMSampler
    else:
        from aurora.latent_generation import LatentSampler, check_settings
        from aurora.tasks.diffusion import DIT, diffusion_run_config

        read_config(args.run, DIT, trust=args.trust_checkpoint, what="RUN")
        settings = check_settings(diffusion_run_config(run_of(args.run)), args.steps, args.cfg_scale, args.sampler,
                                  args.max_seconds)
        make_sampler = LatentSampler
    env = init_distributed(DistConfig())
    try:
        sampler = make_sampler(args.run, env.device, args.step, trust=args.trust_checkpoint)
        records = write_samples(sampler, captions, args.seed, settings, args.out, args.batch_size, env.rank,
                                env.world_size)
        write_rank_records(args.out, records, env.rank, env.world_size)
        barrier()
        if env.is_main:
            print(f"aurora: wrote {write_index(args.out, env.world_size)} samples to {args.out}")
    finally:
        shutdown()
