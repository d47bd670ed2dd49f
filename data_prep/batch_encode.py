"""Encoding clips in batches exactly as one at a time: length-bucketed batches, zero-padded to
whole frames and length-masked, so that each clip gets the codes of its one-clip
``Codec.encode``.

Used by ``data_prep.tokenize``; the ``--options`` named below are that command's.

Batching. Within a shard, a window of ``--bucket-window`` decoded clips is sorted by length
and cut into batches of neighbours holding at most ``--batch-seconds`` of padded audio
(default 200 s on CUDA; 2 s on CPU, where a conv over one ~1 s clip is already compute bound
and bigger batches only fall out of cache) whose lengths differ by at most ``--bucket-width``
(default 0.1, as ``data.bucket_width`` in training: at most ~9% padding). A batch is
zero-padded to its longest clip, rounded up to whole frames, and each clip's codes are cropped
to its own ceil(len / hop) frames. The window bounds how full batches get: on speech-like
lengths (log-normal, median 5 s, 1-20 s) 1024 clips give batches of ~17 clips, ~4% padding,
half the 200 s budget (256 clips: ~10 clips, 29%); it holds the decoded window in memory
(1024 clips of 6 s at 16 kHz: ~400 MB a rank).

Plain zero padding would change a clip's codes: the encoder is non-causal, so the last frames
of a short clip would see the activations its batch-mates leave in the padding (its own
one-clip encode sees the convs' zero padding there instead). ``masked`` batching (the default
when it applies) removes that by construction: for the batch, a pre-hook on every ``Conv1d``
of the codec zeroes each clip's input beyond the clip's own padded length, at that layer's
resolution. Every conv then sees exactly what it sees in the clip's one-clip ``Codec.encode``
(the clip, right-padded with zeros to whole frames, then the conv's own zero padding), so each
clip's codes are mathematically those of its one-clip encode whatever its batch-mates; padding
costs compute only, and duration bucketing keeps that small. This holds for encoders made of
zero-padded ``Conv1d`` layers and per-frame operations (activations such as ELU or Snake,
residual sums, 1x1 projections, the quantizer's per-frame lookup). It is checked when the
codec is loaded: a probe batch of clips of different lengths is encoded masked and one by one
(fp32) and must agree; an encoder that breaks the rule (reflect padding, attention or
normalisation over time, an explicit ``F.pad`` around a conv) fails the probe, and ``auto``
then falls back to ``equal-length`` batching: only clips of the same padded length (in
frames) share a batch, which needs no assumption about the encoder, but fills batches only
where clip lengths repeat (on the synthetic corpora ~1.1-1.3 clips a batch against 9-23 masked,
at a 200 s budget). ``single`` encodes one clip at a time.

What "the same tokens" means numerically: batches are a function of the shard alone (its
samples, ``--bucket-window``, ``--bucket-width``, ``--batch-seconds``), never of the rank, the world size or what
an earlier run did, so the same settings on the same hardware and software give the same
tokens, bit for bit. Against one-clip encodes the math is identical, but conv kernels pick
their code path by shape (oneDNN on CPU, cuDNN on GPU), so latents differ in the last float
bits (~1e-7 relative in fp32); a code can differ only where a lookup is that close to a tie
between two codebook entries. bf16 (``--precision``, the default on CUDA; the quantizer's
lookup itself always runs in fp32) moves latents by ~1e-3 relative and so flips more near-ties
than batching does (2.6% of the codes of a random tiny codec differ from fp32, most in the later
residual stages); a token set is therefore made in one precision (see resuming in
``data_prep.tokenize``).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from aurora.precision import bf16_autocast

BATCHING = ("auto", "masked", "equal-length", "single")
DEFAULT_BATCH_SECONDS = {"cuda": 200.0, "cpu": 2.0}
DEFAULT_BUCKET_WINDOW = 1024
DEFAULT_BUCKET_WIDTH = 0.1


# -- batching -------------------------------------------------------------------------------------
def frames_of(samples: int, hop: int) -> int:
    return -(-samples // hop)


def plan_batches(frames: list[int], hop: int, budget_samples: int, width: float) -> list[list[int]]:
    """Batches (lists of indices into ``frames``) of clips neighbouring in length: sorted by
    length, cut greedily so that a batch, padded to its longest clip, holds at most
    ``budget_samples`` samples (a longer clip goes alone) and its longest clip is at most
    ``1 + width`` times its shortest (``width`` 0: equal lengths only). Depends on ``frames``
    alone (ties in length keep the input order)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(frames)), key=lambda i: (frames[i], i)):
        if current and ((len(current) + 1) * frames[index] * hop > budget_samples
                        or frames[index] > frames[current[0]] * (1 + width)):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


SLICE_MASK_DEVICES = ("cpu",)
"""Device types on which ``length_masks`` zeroes the padding by slices (else by one masked_fill_)."""


class MaskingUnsupported(RuntimeError):
    """The codec's layers do not keep the whole-frames layout that length masking relies on."""


def _needs_mask(conv: nn.Conv1d) -> bool:
    """Whether a conv's outputs inside a clip can see positions beyond it: not for 1x1 convs
    without padding (projections), whose output at t is a function of the input at t alone."""
    return conv.kernel_size != (1,) or conv.padding not in ((0,), "valid")


@contextlib.contextmanager
def length_masks(codec: nn.Module, frames: torch.Tensor, padded_frames: int) -> Iterator[None]:
    """While open, every ``Conv1d`` of ``codec`` (but 1x1 projections) sees clip i of its batch
    input zeroed beyond ``frames[i]`` frames: at a layer whose input has ``padded_frames * r``
    positions, beyond ``frames[i] * r`` (r = samples per frame at that resolution).

    The zeroing is in place: values beyond a clip's end never become part of its result (they
    reach the clip's positions only through convs, which see them zeroed), so it does not matter
    which other reader of the same tensor sees them zeroed too, and no activation is copied. On
    a GPU it is one ``masked_fill_`` per conv (a mask per resolution); on a CPU a slice
    assignment per shorter clip, which touches the padding only (the full pass of a mask cost
    ~10% of a small codec's encode there)."""
    ends = frames.tolist()
    masks: dict[int, torch.Tensor] = {}

    def zero_padding(module: nn.Module, args: tuple):
        x = args[0]
        length = x.shape[-1]
        if x.dim() != 3 or x.shape[0] != len(ends) or length % padded_frames:
            raise MaskingUnsupported(
                f"a {type(module).__name__} input has shape {tuple(x.shape)}, not [{len(ends)}, C, "
                f"{padded_frames} frames x whole samples]")
        scale = length // padded_frames
        try:
            if x.device.type in SLICE_MASK_DEVICES:
                for i, end in enumerate(ends):
                    if end < padded_frames:
                        x[i, :, end * scale:] = 0
            else:
                if length not in masks:
                    masks[length] = (torch.arange(length, device=x.device)
                                     >= frames.to(x.device)[:, None] * scale)[:, None, :]
                x.masked_fill_(masks[length], 0)
        except RuntimeError:  # an input that cannot be written in place (e.g. an expanded view)
            beyond = torch.arange(length, device=x.device) >= frames.to(x.device)[:, None] * scale
            return (x.masked_fill(beyond[:, None, :], 0), *args[1:])
        return None

    handles = [m.register_forward_pre_hook(zero_padding) for m in codec.modules()
               if isinstance(m, nn.Conv1d) and _needs_mask(m)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def encode_batch(codec: nn.Module, clips: list[torch.Tensor], device: torch.device, precision: str,
                 masked: bool, latents: bool = False) -> list[torch.Tensor]:
    """Codes (int16 [n_q, ceil(len / hop)], on the CPU) of each clip (FloatTensor [len]), or
    with ``latents`` its encoder's latents before quantization (float16 [latent_dim, ceil(len / hop)]),
    encoded as one batch padded to its longest clip."""
    hop = codec.cfg.hop_length
    frames = [frames_of(len(clip), hop) for clip in clips]
    padded = max(frames)
    batch = torch.zeros(len(clips), 1, padded * hop, pin_memory=device.type == "cuda")
    for i, clip in enumerate(clips):
        batch[i, 0, : len(clip)] = clip
    uneven = masked and min(frames) != padded
    masks = length_masks(codec, torch.tensor(frames), padded) if uneven else contextlib.nullcontext()
    with torch.inference_mode(), bf16_autocast(device.type, enabled=precision == "bf16"), masks:
        wav = batch.to(device, non_blocking=True)
        codes = codec.latents(wav).to(torch.float16) if latents else codec.encode(wav).to(torch.int16)
    codes = codes.cpu()
    return [codes[i, :, : frames[i]] for i in range(len(clips))]


def masking_problem(codec: nn.Module, device: torch.device) -> str | None:
    """Why length-masked batches would not give each clip its one-clip codes, or None.

    Encodes a probe batch (noise clips of 2 to 16 frames, not whole frames long) masked and
    one clip at a time in fp32, and compares the codes and, when the codec has an ``encoder``
    module, the latents (up to float rounding)."""
    hop = codec.cfg.hop_length
    generator = torch.Generator().manual_seed(0)
    lengths = [2 * hop, 5 * hop - hop // 3, 9 * hop - 1, 16 * hop - hop // 2]
    clips = [0.1 * torch.randn(n, generator=generator) for n in lengths]
    if any(isinstance(m, nn.Conv1d) and m.padding_mode != "zeros" for m in codec.modules()):
        return "a Conv1d pads with something else than zeros"
    try:
        batched = encode_batch(codec, clips, device, "fp32", masked=True)
        encoder = getattr(codec, "encoder", None)
        frames = torch.tensor([frames_of(n, hop) for n in lengths])
        if isinstance(encoder, nn.Module):
            batch = torch.zeros(len(clips), 1, int(frames.max()) * hop)
            for i, clip in enumerate(clips):
                batch[i, 0, : len(clip)] = clip
            with torch.inference_mode(), length_masks(codec, frames, int(frames.max())):
                latents = encoder(batch.to(device)).float().cpu()
    except MaskingUnsupported as exn:
        return str(exn)
    for i, clip in enumerate(clips):
        alone = encode_batch(codec, [clip], device, "fp32", masked=False)[0]
        if not torch.equal(alone, batched[i]):
            return f"a probe clip of {len(clip)} samples got other codes in a masked batch than alone"
        if isinstance(encoder, nn.Module):
            with torch.inference_mode():
                solo = encoder(pad_to_frames(clip, hop).to(device)).float().cpu()[0]
            own = latents[i, :, : int(frames[i])]
            if (own - solo).abs().max() > 1e-4 * max(1.0, float(solo.abs().max())):
                return (f"a probe clip's latent differs by {float((own - solo).abs().max()):.3g} in a masked "
                        f"batch from its one-clip encode")
    return None


def pad_to_frames(clip: torch.Tensor, hop: int) -> torch.Tensor:
    """[S] -> [1, 1, S'] right-padded with zeros to whole frames, as ``Codec.encode`` does."""
    return torch.nn.functional.pad(clip.view(1, 1, -1), (0, -len(clip) % hop))


@dataclass
class BatchStats:
    batches: int = 0
    clips: int = 0
    frames: int = 0
    """Frames of the clips themselves."""
    padded_frames: int = 0
    """Frames the batches held (clips x longest clip), padding included."""
    budget_frames: float = 0.0
    """What the batches could have held: batches x --batch-seconds, in frames."""
    encode_s: float = 0.0

    def add(self, other: "BatchStats") -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict:
        return {"batches": self.batches, "clips_per_batch": self.clips / max(self.batches, 1),
                "padding": 1 - self.frames / max(self.padded_frames, 1),
                "budget_fill": self.padded_frames / max(self.budget_frames, 1e-9)}


class BatchEncoder:
    """Encodes windows of clips in length-bucketed batches; keeps batch statistics."""

    def __init__(self, codec: nn.Module, device: torch.device, precision: str, batching: str,
                 batch_seconds: float, bucket_width: float = DEFAULT_BUCKET_WIDTH, latents: bool = False):
        self.codec, self.device, self.precision, self.batching = codec, device, precision, batching
        self.latents = latents
        """Encode to the latents before quantization rather than to codes (``encode_batch``)."""
        self.hop = codec.cfg.hop_length
        self.budget = max(1, int(batch_seconds * codec.cfg.sample_rate))
        self.width = 0.0 if batching == "equal-length" else bucket_width
        self.budget_frames = self.budget / self.hop
        self.stats = BatchStats()

    def encode(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Codes (or latents) of each clip, in the order given."""
        frames = [frames_of(len(clip), self.hop) for clip in clips]
        if self.batching == "single":
            batches = [[i] for i in range(len(clips))]
        else:
            batches = plan_batches(frames, self.hop, self.budget, self.width)
        out: list[torch.Tensor | None] = [None] * len(clips)
        for batch in batches:
            started = time.perf_counter()
            codes = encode_batch(self.codec, [clips[i] for i in batch], self.device, self.precision,
                                 masked=self.batching == "masked", latents=self.latents)
            self.stats.encode_s += time.perf_counter() - started
            longest = max(frames[i] for i in batch)
            self.stats.batches += 1
            self.stats.clips += len(batch)
            self.stats.frames += sum(frames[i] for i in batch)
            self.stats.padded_frames += len(batch) * longest
            self.stats.budget_frames += max(self.budget_frames, longest)
            for i, c in zip(batch, codes):
                out[i] = c
        return out


# -- decoding ahead -------------------------------------------------------------------------------
def ordered_prefetch(fn: Callable, items: Iterable, threads: int, depth: int) -> Iterator:
    """``fn(item)`` for each item in order, computed by ``threads`` threads at most ``depth``
    items ahead (FLAC decoding and resampling release the GIL)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="tokenize-decode") as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
