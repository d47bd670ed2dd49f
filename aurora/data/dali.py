"""``data.backend=dali``: audio batches from NVIDIA DALI.

When to pick which backend
--------------------------
``native`` (the default, aurora.data.stream) reads the tars in DataLoader workers with
soundfile/torchaudio. It resumes *exactly*, and *elastically* (another world size or worker
count continues the epoch re-split, nothing lost or repeated), supports token shards and
duration bucketing (``data.batching=dynamic``), and skips and counts bad samples.

``dali`` runs one DALI pipeline per rank: ``fn.readers.webdataset`` reads the tars,
``fn.decoders.audio`` decodes FLAC on DALI's CPU threads (downmix to mono, resample to
``data.sample_rate``), and the crop, padding and optional log-mel features run on
``data.dali_device``. Pick it when decoding/resampling or feature extraction is the
bottleneck, or to compute log-mel on the GPU (``data.dali_device=gpu``, ``data.dali_mel_bins``)
so the training process does not. Its limits: audio shards and ``data.batching=fixed`` only;
resume needs the same world size (no elastic resume); an undecodable FLAC stops the run with
a DataError naming it, where ``native`` would skip it (see "Bad data" below).

The pipeline
------------
- ``fn.readers.webdataset(paths=urls, index_paths=..., ext=["flac", "json"],
  missing_component_behavior="skip", shard_id=rank, num_shards=world_size,
  shuffle_after_epoch=True, shuffle_after_epoch_seed=seed, random_shuffle=shuffle_buffer > 1,
  initial_fill=shuffle_buffer, pad_last_batch=False, stick_to_shard=False)``.
  DALI splits the *samples* (all tars in order, concatenated) into ``world_size`` contiguous
  ranges whose sizes differ by at most one, so uneven tars do not matter. Each epoch it
  reshuffles the tar order (the same order on every rank, from ``seed``) and each rank reads
  its range; within an epoch the ranks' samples are disjoint (the shuffle buffer is drained at
  each epoch end, so it never mixes in the next epoch's range). ``Pipeline.run`` never stops at
  an epoch end: a batch that reaches the end of the range is filled from the next epoch
  (``pad_last_batch=False``: no repeated samples), so every rank always gets a full batch and
  no rank waits for another. (``pad_last_batch=True`` would repeat a range's last sample to
  fill its last batch; that is for epoch-based iterators and is not used.) Samples that lack a
  ``.flac`` or ``.json`` are skipped by DALI; they are counted once, from the index files, and
  logged at start-up (not in ``batch["skipped"]``).
- Index files: DALI wants one per tar (``index_paths``) and otherwise walks every tar's
  headers in every rank's pipeline constructor, warning each time. We write them once with
  DALI's own ``wds2idx`` module (shipped in the DALI wheel; it uses ``tar --list``) into a
  cache directory (``$AURORA_DALI_INDEX_DIR``, default ``~/.cache/aurora/dali-index``),
  keyed by the tar's path, size and mtime, so the shard directory may be read-only and a
  rewritten tar gets a fresh index. Writes are atomic, so ranks building the same index at
  once are safe. When ``wds2idx`` cannot be imported or fails, DALI infers the indexes itself.
- ``fn.decoders.audio(downmix=True, sample_rate=data.sample_rate, dtype=FLOAT)``: CPU only
  (DALI has no GPU or "mixed" audio decoder). Then a random crop of ``S =
  round(segment_seconds * sample_rate)`` samples: ``fn.random.uniform`` picks the start,
  ``fn.slice(..., out_of_bounds_policy="pad")`` crops and zero-pads shorter clips to S.
  ``lengths`` is min(decoded length, S). Unlike native (which seeks and decodes only the crop,
  at the source rate, with an RNG keyed by seed, epoch and sample key), DALI decodes and
  resamples the whole clip and draws the crop from the pipeline's seeded RNG.
- ``data.dali_mel_bins > 0``: ``fn.spectrogram`` (25 ms periodic Hann window rounded to an even
  number of samples, 10 ms hop, FFT size the next power of two, centred windows with reflect
  padding, power 2) ->
  ``fn.mel_filter_bank`` (Slaney mel scale and area normalisation, 0 Hz to Nyquist) ->
  ``fn.to_decibels`` (10 log10 of power, reference 1, floor -100 dB). At 16 kHz that is
  ``torchaudio.transforms.MelSpectrogram(n_fft=512, win_length=400, hop_length=160,
  norm="slaney", mel_scale="slaney")`` followed by ``10 * log10(max(x, 1e-10))``, and the
  values agree with it to float precision. ``mel`` is [B, bins, 1 + S // hop], computed on
  the cropped, zero-padded segment (frames past ``lengths`` are silence).
- ``data.dali_device=gpu``: read + decode on the CPU, then ``.gpu()`` and crop, pad and mel on
  the rank's current CUDA device (``torch.cuda.current_device()``); ``audio`` and ``mel`` are
  then CUDA tensors (the trainer's ``.to(device)`` is a no-op), ``lengths`` stays on the CPU.
  ``data.num_workers`` sets DALI's CPU threads (at least 1); DALI prefetches 2 batches.

Resume
------
``state_dict()`` holds DALI's own pipeline checkpoint (``Pipeline(enable_checkpointing=True)``,
``Pipeline.checkpoint()``: the reader's position and shuffle state and every random
generator's state, as of the last batch handed out, prefetching notwithstanding).
``load_state_dict`` rebuilds the pipeline with ``Pipeline(..., checkpoint=...)``, which
continues with exactly the batches an uninterrupted run would have produced. That needs the
same rank, world size, seed, shard set, batch size, shuffle buffer and mel setting; another
world size or rank raises a DataError (elastic resume needs ``data.backend=native``), as does
a state saved by the native loader.

Bad data
--------
``fn.decoders.audio`` cannot skip a sample it fails to decode: ``Pipeline.run`` raises and
DALI declares the pipeline invalid (the whole batch is lost). So an undecodable or empty FLAC
stops training with a DataError. To name the culprit, the loader rebuilds the pipeline from
the failed one's checkpoint with the decoder replaced by a constant, reads the same batch's
``source_info`` (``"<tar>:<offset>:<member>"``), and checks those members with the native
loader's rule (``aurora.data.audio.check_flac``, which decodes them with soundfile).
Fix or drop the sample (``data_prep.make_shards`` skips such clips), or train with
``data.backend=native``, which skips and counts bad samples. A tar whose index has a member
ending past the end of the file (a truncated tar), or a ``.flac`` or ``.json`` over
``data.max_member_mb`` (its size is in the index: nothing is read), is refused at start-up,
naming the shard; one holding fewer usable samples than manifest.json lists is logged. The native reader's other limits (sample rate and channels, resample ratio,
``data.max_seconds``, from the audio header before decoding) are not applied: DALI decodes and
resamples whole clips in its own decoder. Verify shards from elsewhere with
``python -m data_prep.inspect_shards`` (the native rules) before a DALI run. A ``.json`` that breaks
the native loader's rule (``aurora.data.members.metadata``: not a JSON object, a ``text`` that
is not a string, a ``duration`` or ``frames`` that is not a positive number) does not stop
anything: the example keeps an empty caption and is counted under
``batch["skipped"]["bad_json"]`` (DALI cannot drop a sample once read).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tarfile
from typing import Iterator

import numpy as np
import torch

from aurora.data.audio import check_flac
from aurora.data.config import DataConfig, DataError
from aurora.data.members import caption
from aurora.data.skips import BadSample, SkipCounter

log = logging.getLogger(__name__)

STATE_VERSION = 1
"""Version of this loader's state; states also carry ``"backend": "dali"``."""
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
DB_FLOOR = -100.0
"""log-mel floor in dB: 10 log10(1e-10), torchaudio's AmplitudeToDB default amin."""
READER = "reader"
DECODER = "decode"
_INSTALL = "pip install nvidia-dali-cuda130 (or pip install -e '.[dali]')"


def build_dali_loader(cfg: DataConfig, kind: str, rank: int, world_size: int, seed: int,
                      urls: list[str], manifest: dict | None) -> "DaliLoader":
    """The DALI batch stream of ``rank`` out of ``world_size`` (``urls``, ``manifest``: from
    ``aurora.data.manifest.resolve_shards(cfg.shards)``)."""
    if kind != "audio":
        raise DataError(f"data.backend=dali reads audio shards only, but this task trains on {kind}: "
                        f"use data.backend=native")
    if cfg.batching != "fixed":
        raise DataError(f"data.backend=dali supports data.batching=fixed only, got {cfg.batching!r}: use "
                        f"data.batching=fixed, or data.backend=native for duration-bucketed batches")
    if cfg.dali_device not in ("cpu", "gpu"):
        raise DataError(f"data.dali_device must be 'cpu' or 'gpu', got {cfg.dali_device!r} (DALI decodes "
                        f"audio on the CPU either way; 'gpu' runs crop, padding and mel on the GPU)")
    if cfg.dali_mel_bins < 0:
        raise DataError(f"data.dali_mel_bins must be >= 0, got {cfg.dali_mel_bins}")
    if manifest is not None and manifest.get("kind") != "audio":
        raise DataError(f"data.shards {cfg.shards!r} holds {manifest.get('kind')} shards: data.backend=dali "
                        f"reads audio shards; point data.shards at audio shards")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    if not urls:
        raise DataError(f"data.shards {cfg.shards!r} names no tar")
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as exn:
        raise DataError(f"data.backend=dali needs NVIDIA DALI, which cannot be imported ({exn}): "
                        f"{_INSTALL}, or use data.backend=native") from None
    if cfg.dali_device == "gpu" and not torch.cuda.is_available():
        raise DataError("data.dali_device=gpu needs a CUDA GPU, and torch sees none: use data.dali_device=cpu")
    return DaliLoader(cfg, rank, world_size, seed, urls, manifest)


class DaliLoader:
    """An infinite iterable of batches for one rank, with ``state_dict``/``load_state_dict``.

    Each ``iter()`` continues where the batches taken so far (or a loaded state) left off.
    """

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, seed: int, urls: list[str],
                 manifest: dict | None = None):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.urls = list(urls)
        self.segment = round(cfg.segment_seconds * cfg.sample_rate)
        self.gpu = cfg.dali_device == "gpu"
        self.batches = 0
        self.digest = hashlib.sha1("\n".join(os.path.basename(u) for u in self.urls).encode()).hexdigest()[:16]
        self.index_paths = _index_files(self.urls)
        if self.index_paths is not None:
            _check_index(self.urls, self.index_paths, world_size, manifest, cfg.max_member_mb)
        self._counter = SkipCounter()
        self._restore: bytes | None = None
        """The checkpoint the next pipeline starts from (None: the beginning)."""
        self._pipe = None

    # -- the pipeline ------------------------------------------------------------------------
    def _build(self, checkpoint: bytes | None, diagnose: bool = False):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath

        cfg = self.cfg
        shuffle = cfg.shuffle_buffer > 1
        reader_args = dict(
            name=READER, paths=self.urls, ext=["flac", "json"], missing_component_behavior="skip",
            shard_id=self.rank, num_shards=self.world_size, pad_last_batch=False, stick_to_shard=False,
            shuffle_after_epoch=True, shuffle_after_epoch_seed=_seed(self.seed, "shards"),
            random_shuffle=shuffle, seed=_seed(self.seed, "samples", self.rank))
        if shuffle:
            reader_args["initial_fill"] = cfg.shuffle_buffer
        if self.index_paths is not None:
            reader_args["index_paths"] = self.index_paths
        segment = self.segment
        mel_bins = cfg.dali_mel_bins
        rate = cfg.sample_rate
        # An even window: DALI and torch place an odd window one sample apart inside the FFT frame.
        window = 2 * max(1, round(WINDOW_SECONDS * rate / 2))
        hop = max(1, round(HOP_SECONDS * rate))
        nfft = 1 << (window - 1).bit_length()
        hann = torch.hann_window(window, periodic=True, dtype=torch.float64).tolist()

        @pipeline_def(enable_checkpointing=True)
        def pipeline():
            flac, meta = fn.readers.webdataset(**reader_args)
            if diagnose:
                # Same graph and names as the real pipeline (a checkpoint restores by operator
                # name), but nothing is decoded: only the reader's order matters.
                audio = fn.constant(fdata=[0.0], shape=[1], dtype=types.FLOAT, name=DECODER)
            else:
                audio, _ = fn.decoders.audio(flac, downmix=True, sample_rate=float(rate), dtype=types.FLOAT,
                                             name=DECODER)
            frames = audio.shape(dtype=types.INT32)  # [1] per sample
            excess = dmath.max(frames - segment, 0)
            u = fn.random.uniform(range=[0.0, 1.0], shape=[1], name="crop_start")
            start = fn.cast(dmath.min(dmath.floor(u * fn.cast(excess + 1, dtype=types.FLOAT)), excess),
                            dtype=types.INT32, name="crop_start_int")
            if self.gpu:
                audio = audio.gpu()
            crop = fn.slice(audio, start=start, shape=[segment], axes=[0], out_of_bounds_policy="pad",
                            fill_values=[0.0], name="crop")
            info = fn.get_property(flac, key="source_info", name="source_info")
            outputs = [crop, frames, meta, info]
            if mel_bins:
                spec = fn.spectrogram(crop, nfft=nfft, window_length=window, window_step=hop, window_fn=hann,
                                      center_windows=True, reflect_padding=True, power=2, name="spectrogram")
                mel = fn.mel_filter_bank(spec, sample_rate=float(rate), nfilter=mel_bins, freq_low=0.0,
                                         freq_high=rate / 2, mel_formula="slaney", normalize=True, name="mel")
                outputs.append(fn.to_decibels(mel, multiplier=10.0, reference=1.0, cutoff_db=DB_FLOOR,
                                              name="log"))
            return tuple(outputs)

        device_id = torch.cuda.current_device() if self.gpu else None
        pipe = pipeline(batch_size=self.cfg.batch_size, num_threads=max(cfg.num_workers, 1), device_id=device_id,
                        seed=_seed(self.seed, "pipeline", self.rank), prefetch_queue_depth=2,
                        checkpoint=checkpoint)
        try:
            pipe.build()
        except RuntimeError as exn:
            what = "restore the saved data position into" if checkpoint is not None else "start"
            raise DataError(f"could not {what} the DALI pipeline over {len(self.urls)} shard(s) "
                            f"(data.shards={self.cfg.shards!r}): {_dali_reason(exn)}") from None
        return pipe

    # -- batches ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self._next()

    def _next(self) -> dict:
        if self._pipe is None:
            self._pipe = self._build(self._restore)
        try:
            outputs = self._pipe.run()
        except RuntimeError as exn:
            raise self._failure(exn) from None
        batch = self._to_batch(outputs)
        self.batches += 1
        return batch

    def _to_batch(self, outputs) -> dict:
        crop, frames, meta, info = outputs[:4]
        batch_size = len(info)
        keys, texts = [], []
        for i in range(batch_size):
            shard, member = _split_source_info(bytes(np.asarray(info.at(i))).decode())
            key = _member_key(member)
            keys.append(key)
            sample = {"__key__": key, "json": np.asarray(meta.at(i)).tobytes()}
            try:
                texts.append(caption(sample))
            except BadSample as bad:
                self._counter.add(bad.reason, os.path.basename(shard), bad.detail)
                texts.append("")
        lengths = torch.from_numpy(np.asarray(frames.as_tensor()).reshape(batch_size).astype(np.int64))
        batch = {"audio": _to_torch(crop).unsqueeze(1), "lengths": lengths.clamp(max=self.segment),
                 "text": texts, "keys": keys, "skipped": self._counter.take()}
        if len(outputs) > 4:
            batch["mel"] = _to_torch(outputs[4])
        return batch

    def _failure(self, exn: RuntimeError) -> DataError:
        reason = _dali_reason(exn)
        if "decoders.audio" not in str(exn):
            return DataError(f"the DALI pipeline of rank {self.rank} failed after {self.batches} batches: {reason}")
        bad, candidates = self._find_undecodable()
        advice = ("data.backend=dali cannot skip undecodable audio (DALI invalidates its pipeline): remove or "
                  "re-encode it (data_prep.make_shards skips such clips), or train with data.backend=native, "
                  "which skips and counts bad samples")
        if bad:
            named = "; ".join(f"{member} in shard {shard} ({why})" for shard, member, why in bad[:5])
            return DataError(f"DALI could not decode {named} [{reason}]: {advice}")
        if candidates:
            names = ", ".join(f"{shard}:{member}" for shard, member in candidates)
            return DataError(f"DALI could not decode one of {names} [{reason}]: {advice}")
        return DataError(f"DALI could not decode a FLAC member of rank {self.rank}'s batch {self.batches} "
                         f"[{reason}]: {advice}")

    def _find_undecodable(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """The failed batch's members that the native loader's rule refuses too, and all its members."""
        try:
            twin = self._build(self._pipe.checkpoint(), diagnose=True)
            info = twin.run()[3]
            candidates = [_split_source_info(bytes(np.asarray(info.at(i))).decode()) for i in range(len(info))]
            del twin
        except (RuntimeError, DataError) as exn:
            log.warning("could not find which sample DALI failed to decode: %s", exn)
            return [], []
        bad = []
        by_shard: dict[str, list[str]] = {}
        for shard, member in candidates:
            by_shard.setdefault(shard, []).append(member)
        for shard, members in by_shard.items():
            try:
                with tarfile.open(shard) as tar:
                    for member in dict.fromkeys(members):
                        why = _undecodable(member, tar.extractfile(member).read())
                        if why:
                            bad.append((shard, member, why))
            except (OSError, tarfile.TarError, KeyError, AttributeError) as exn:
                bad.append((shard, "?", f"unreadable tar: {exn}"))
        return bad, candidates

    # -- state ------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"kind": "audio", "seed": self.seed, "shards": self.digest, "batch_size": self.cfg.batch_size,
                "shuffle_buffer": self.cfg.shuffle_buffer, "dali_mel_bins": self.cfg.dali_mel_bins}

    def state_dict(self) -> dict:
        """This rank's position: DALI's pipeline checkpoint as of the last batch handed out."""
        checkpoint = self._pipe.checkpoint() if self._pipe is not None else self._restore
        return {"backend": "dali", "version": STATE_VERSION, **self._identity(), "rank": self.rank,
                "world_size": self.world_size, "batches": self.batches,
                "checkpoint": None if checkpoint is None else base64.b64encode(checkpoint).decode("ascii")}

    def load_state_dict(self, states: list[dict]) -> None:
        """Continue from the states of every rank of the run that saved (``state_dict`` of each)."""
        if len(states) != self.world_size:
            raise DataError(f"the data position was saved by {len(states)} rank(s), this run has "
                            f"{self.world_size}: data.backend=dali resumes with the same world size only; "
                            f"elastic resume needs data.backend=native")
        state = states[self.rank]
        if not isinstance(state, dict) or state.get("backend") != "dali":
            raise DataError("this checkpoint's data position was saved by data.backend=native; the DALI reader "
                            "cannot continue it: resume with data.backend=native")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"DALI data loader state version {state.get('version')!r} is not supported "
                            f"(supports {STATE_VERSION}): this checkpoint's data position cannot be used")
        if (state.get("world_size"), state.get("rank")) != (self.world_size, self.rank):
            raise DataError(f"the data position was saved by rank {state.get('rank')} of world size "
                            f"{state.get('world_size')}, this is rank {self.rank} of {self.world_size}: "
                            f"data.backend=dali resumes with the same world size only; elastic resume needs "
                            f"data.backend=native")
        changed = {k: (state.get(k), v) for k, v in self._identity().items() if state.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in changed.items())
            raise DataError(f"cannot resume the DALI data stream ({details}): resume with the same run.seed, "
                            f"data.shards, data.batch_size, data.shuffle_buffer and data.dali_mel_bins")
        checkpoint = state["checkpoint"]
        self._restore = None if checkpoint is None else base64.b64decode(checkpoint)
        self.batches = state["batches"]
        self._pipe = None  # rebuilt from the checkpoint by the next batch


# -- helpers ----------------------------------------------------------------------------------
def _seed(seed: int, *parts) -> int:
    """A DALI seed (a non-negative int32) derived from the run seed."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


def _to_torch(tensor_list) -> torch.Tensor:
    """A batch of equal-shape samples as a torch tensor (a copy; CUDA for GPU outputs)."""
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

    return to_torch_tensor(tensor_list.as_tensor(), copy=True)


def _split_source_info(info: str) -> tuple[str, str]:
    """``"<tar path>:<offset>:<member>"`` (the webdataset reader's source_info) -> (tar, member)."""
    shard, _, member = info.rsplit(":", 2)
    return shard, member


def _member_key(member: str) -> str:
    """The sample key of a tar member, as webdataset and DALI group them: up to the first dot of
    the file name (``dir/abc.flac`` -> ``dir/abc``)."""
    slash = member.rfind("/") + 1
    dot = member.find(".", slash)
    return member if dot < 0 else member[:dot]


def _undecodable(member: str, data: bytes) -> str:
    """Why the FLAC tar member ``member`` holding ``data`` breaks the native loader's rules
    (aurora.data.audio.check_flac), or "" when it does not."""
    try:
        check_flac({"__key__": _member_key(member), "flac": data})
    except BadSample as bad:
        return bad.detail
    return ""


def _dali_reason(exn: Exception) -> str:
    """The informative part of a DALI error (its messages repeat tracebacks and boilerplate)."""
    lines = [line.strip() for line in str(exn).splitlines() if line.strip()]
    if "encountered:" in lines:
        lines = lines[len(lines) - lines[::-1].index("encountered:"):]
    noise = ("Critical error", "Current pipeline object", "C++ context")
    useful = [line for line in lines if not line.startswith(noise)]
    return " ".join(useful) if useful else type(exn).__name__


def _index_dir() -> str:
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aurora",
                           "dali-index")
    return os.environ.get("AURORA_DALI_INDEX_DIR") or default


def _index_files(urls: list[str]) -> list[str] | None:
    """A DALI index file per tar (made once with DALI's wds2idx into a cache directory), or
    None to let DALI infer them."""
    try:
        from wds2idx import IndexCreator
    except ImportError:
        log.info("DALI's wds2idx module is not importable: DALI infers the tar indexes itself")
        return None
    directory = _index_dir()
    paths = []
    try:
        os.makedirs(directory, exist_ok=True)
        for url in urls:
            stat = os.stat(url)
            ident = f"{os.path.realpath(url)}\0{stat.st_size}\0{stat.st_mtime_ns}"
            name = os.path.basename(url).removesuffix(".tar")
            path = os.path.join(directory, f"{name}-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.idx")
            if not os.path.isfile(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with IndexCreator(url, tmp, verbose=False) as creator:
                    creator.create_index()
                os.replace(tmp, path)
            paths.append(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exn:
        log.warning("could not write DALI index files into %s (%s): DALI infers them instead (set "
                    "AURORA_DALI_INDEX_DIR to a writable directory)", directory, exn)
        return None
    return paths


def _check_index(urls: list[str], index_paths: list[str], world_size: int, manifest: dict | None,
                 max_member_mb: float) -> None:
    """Refuse truncated tars, members over ``data.max_member_mb`` and fewer samples than ranks;
    log samples DALI will skip for a missing member, and tars holding fewer samples than
    manifest.json lists."""
    listed = {s["name"]: s["samples"] for s in manifest["shards"]} if manifest else {}
    total = incomplete = 0
    for url, path in zip(urls, index_paths):
        size = os.path.getsize(url)
        with open(path) as f:
            lines = f.read().splitlines()[1:]
        complete = 0
        for line in lines:
            fields = line.split()
            exts, sizes = fields[0::4], [int(n) for n in fields[2::4]]
            ends = [int(o) + n for o, n in zip(fields[1::4], sizes)]
            for ext, member_size in zip(exts, sizes):
                if ext in ("flac", "json") and member_size > max_member_mb * 1e6:
                    raise DataError(f"shard {url}: the .{ext} of sample {fields[3].rsplit('.', 1)[0]} is "
                                    f"{member_size / 1e6:.1f} MB, over data.max_member_mb={max_member_mb:g}: DALI "
                                    f"cannot skip a sample it reads; drop it, raise the limit, or train with "
                                    f"data.backend=native, which skips and counts it")
            if max(ends, default=0) > size:
                raise DataError(f"shard {url} is truncated (its member {fields[3]} ends past the end of the "
                                f"file): re-create or remove it; data.backend=native would read up to the damage "
                                f"and skip the rest")
            complete += "flac" in exts and "json" in exts
        name = os.path.basename(url)
        if name in listed and complete < listed[name]:
            log.warning("%s holds %d usable samples, manifest.json lists %d", name, complete, listed[name])
        total += len(lines)
        incomplete += len(lines) - complete
    if incomplete:
        log.warning("%d of %d samples lack a .flac or .json member; DALI skips them (not counted in "
                    "data/skipped)", incomplete, total)
    if total - incomplete < world_size:
        raise DataError(f"the shards hold {total - incomplete} usable samples, fewer than the {world_size} ranks: "
                        f"use fewer ranks, or more data")
