"""Checkpoints with torch.distributed.checkpoint (DCP): sharded, resharding on load, and safe
against crashes, full disks and preemption.

The layout of ``RUN/checkpoints`` and its reading outside training are ``aurora.runs``.

A save is written into ``step_N.tmp``; once every rank's files are written, the main rank
renames it to ``step_N`` and only then moves ``latest`` (itself replaced atomically), and only
then deletes the checkpoints older than it beyond ``keep_last_n``. A crash at any point leaves ``latest`` on a
complete checkpoint. The per-rank files hold what only fits that rank (RNG states, recipe
state); ``shared.pt`` holds what every rank of a resumed job may need from all the saving ranks
(each one's data stream position, for an elastic resume on another world size).

Failures: DCP gathers every rank's write errors and raises on all ranks, and one all-reduce
makes the ranks agree on their own files, so a save is complete everywhere or skipped
everywhere. A full disk (ENOSPC) deletes every checkpoint but the latest complete one and
retries once; any other failure, or a second one, skips this save (counted as
``errors/checkpoint``) and training goes on.

Async saves (``trainer.async_checkpoint``) copy the state to CPU memory and write it in a
background thread over a separate gloo process group, so training collectives never interleave
with the checkpoint's; the main rank finalises (rename, ``latest``) when the write is done, seen
at a later step boundary, and every save first waits for the one before. The copy goes into
buffers made at the first save and reused by every later one (``_CachedStager``), pinned on CUDA
so that the copy from the GPU runs at full bandwidth; the state's other values are taken afresh
each time.
"""

import errno
import os
import pickle
import shutil
import sys
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._state_dict_utils import CompanionMismatch, _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import BlockingAsyncStager

from aurora.distributed import DistEnv, barrier
from aurora.distributed.env import background_group
from aurora.perf.spans import span
from aurora.perf.step_clock import CHECKPOINT
from aurora.runs import (LATEST, SHARED_FILE, complete_checkpoints, rank_file, resolve_checkpoint, saved_world,
                         step_dirname)
from aurora.train import faults
from aurora.train.nonfatal import NonFatal

def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it wraps: DCP's per-rank failures, causes) is a full disk."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, CheckpointException):
            todo += [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        todo += [e.__cause__, e.__context__]
    return False


class _Writer(dcp.FileSystemWriter):
    """DCP's file writer, with the test hook that simulates a full disk at the write call."""

    def __init__(self, path: Path, checkpoints_dir: Path):
        super().__init__(path)
        self.checkpoints_dir = checkpoints_dir

    def write_data(self, plan, planner):
        faults.check_disk_quota(self.checkpoints_dir)
        return super().write_data(plan, planner)


class _CachedStager(BlockingAsyncStager):
    """DCP's blocking stager with ``cache_staged_state_dict``, written again because DCP's always
    pins its buffers, which needs CUDA, and keeps a cache that no longer fits the state (DCP's
    ``DefaultStager``, which would do, fails to deep-copy FSDP's state dicts in torch 2.11).
    Tensors are copied into the CPU buffers of the first save; every other value is the state's
    own. The buffers are remade when the state's layout changes. Reusing them is safe because a
    save starts only after the one before is written."""

    def __init__(self, pin_memory: bool):
        super().__init__(cache_staged_state_dict=True)
        self.pin_memory = pin_memory

    def stage(self, state_dict: dict) -> dict:
        if self.state_dict_cache is not None:
            try:
                return _copy_state_dict(state_dict, self.state_dict_cache)
            except CompanionMismatch:
                pass
        self.state_dict_cache = _create_cpu_state_dict(state_dict, pin_memory=self.pin_memory)
        return _copy_state_dict(state_dict, self.state_dict_cache)


_OK, _FAILED, _DISK_FULL = 0, 1, 2


@dataclass
class _Pending:
    """An async save still being written."""

    step: int
    tmp: Path
    future: Future


class Checkpointer:
    def __init__(self, run_dir: Path, env: DistEnv, nonfatal: NonFatal, keep_last_n: int | None = None,
                 async_save: bool = False):
        self.dir = Path(run_dir) / "checkpoints"
        self.env = env
        self.nonfatal = nonfatal
        self.keep_last_n = keep_last_n
        self.async_save = async_save
        # Every rank joins it now (a collective the first time); the background writes use it alone.
        self._async_group = background_group() if async_save else None
        self._stager = _CachedStager(pin_memory=env.device.type == "cuda") if async_save else None
        self._pending: _Pending | None = None

    def latest(self) -> Path | None:
        try:
            return resolve_checkpoint(self.dir.parent)
        except FileNotFoundError:
            return None

    # -- saving -------------------------------------------------------------------------------
    def save(self, step: int, app_state: dict, rank_state: dict, shared_state: dict,
             native: Callable[[Path], None] | None = None) -> bool:
        """Save on every rank (collective). ``shared_state`` is written by the main rank alone;
        ``native(directory)`` writes an engine's own files beside DCP's (synchronously).
        Returns False when the save was skipped after a failure (already reported)."""
        self.wait()
        outcome, error = self._write(step, app_state, rank_state, shared_state, native)
        if outcome == _DISK_FULL:
            if self.env.is_main:
                freed = self._delete_all_but_latest()
                print(f"aurora: disk full while saving {step_dirname(step)}; deleted {freed or 'no'} older "
                      f"checkpoints (kept the latest complete one) and retrying once", file=sys.stderr, flush=True)
            barrier()
            outcome, error = self._write(step, app_state, rank_state, shared_state, native)
        if outcome != _OK:
            self._abandon(step, error, "disk full" if outcome == _DISK_FULL else "failed")
            return False
        if self._pending is None:
            self._finalize(step)
        return True

    def _write(self, step: int, app_state: dict, rank_state: dict, shared_state: dict,
               native: Callable[[Path], None] | None) -> tuple[int, BaseException | None]:
        tmp = self.dir / (step_dirname(step) + ".tmp")
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        outcome, error = _OK, None
        try:
            torch.save(rank_state, rank_file(tmp, self.env.rank, self.env.world_size))
            if self.env.is_main:
                torch.save(shared_state, tmp / SHARED_FILE)
        except Exception as e:
            outcome, error = (_DISK_FULL if _is_disk_full(e) else _FAILED), e
        if not self.async_save:
            try:  # every rank enters DCP's collectives, even one whose own files failed
                dcp.save(app_state, storage_writer=_Writer(tmp, self.dir))
            except (Exception, CheckpointException) as e:  # DCP raises on every rank when any failed
                outcome, error = max(outcome, _DISK_FULL if _is_disk_full(e) else _FAILED), error or e
        if native is not None:
            try:
                native(tmp)
            except Exception as e:
                outcome, error = max(outcome, _DISK_FULL if _is_disk_full(e) else _FAILED), error or e
        agreed = torch.tensor(outcome, device=self.env.device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        outcome = int(agreed.item())
        if outcome == _OK and self.async_save:
            future = dcp.async_save(app_state, storage_writer=_Writer(tmp, self.dir), process_group=self._async_group,
                                    async_stager=self._stager)
            self._pending = _Pending(step, tmp, future)
        return outcome, error

    def _abandon(self, step: int, error: BaseException | None, why: str) -> None:
        """Give up this save on every rank: its directory goes, ``latest`` stays. Counted once
        (on the main rank) as ``errors/checkpoint``; other ranks show their own error."""
        summary = RuntimeError(f"checkpoint {step_dirname(step)} {why}; skipped it on every rank, latest stays "
                               f"at {self._latest_name()}: {error or 'another rank could not write its files'}")
        summary.__cause__ = error
        if self.env.is_main:
            self.nonfatal.record("checkpoint", summary)
            shutil.rmtree(self.dir / (step_dirname(step) + ".tmp"), ignore_errors=True)
        elif error is not None and not isinstance(error, CheckpointException):  # DCP's reaches rank 0 too
            print(f"aurora: rank {self.env.rank}: {summary}", file=sys.stderr, flush=True)

    def poll(self) -> None:
        """At a step boundary: finalise an async save whose writes are done (no collective)."""
        if self._pending is not None and self._pending.future.done():
            self._complete_pending()

    def wait(self) -> bool:
        """Block until the async save in flight, if any, is written and finalised; False if it
        failed (the same answer on every rank: DCP raises on all of them)."""
        return self._complete_pending() if self._pending is not None else True

    def _complete_pending(self) -> bool:
        pending, self._pending = self._pending, None
        try:
            pending.future.result()
        except (Exception, CheckpointException) as e:
            self._abandon(pending.step, e, "failed in the background")
            if self.env.is_main and _is_disk_full(e):
                self._delete_all_but_latest()  # room for the next save
            return False
        self._finalize(pending.step)
        return True

    def _finalize(self, step: int) -> None:
        """Main rank: rename into place, then move ``latest``, then prune. The main rank's DCP
        save returns only after every rank's writes and the metadata are done."""
        if self.env.is_main:
            with span("checkpoint/finalise", CHECKPOINT):
                self._finalize_main(step)

    def _finalize_main(self, step: int) -> None:
        final = self.dir / step_dirname(step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(final.with_name(final.name + ".tmp"), final)
        faults.maybe_crash_before_latest(step)
        pointer_tmp = self.dir / (LATEST + ".tmp")
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, self.dir / LATEST)
        if self.keep_last_n:
            # Only saves older than this one go: a higher-numbered checkpoint (``latest`` was
            # rolled back past it) is another timeline's, and this save is the one ``latest`` names.
            found = complete_checkpoints(self.dir)
            older = found[:found.index(final)]
            for old in older[:max(0, len(older) - (self.keep_last_n - 1))]:
                shutil.rmtree(old, ignore_errors=True)

    def _latest_name(self) -> str:
        latest = self.latest()
        return latest.name if latest is not None else "none"

    def _delete_all_but_latest(self) -> int:
        latest = self.latest()
        doomed = [p for p in self.dir.glob("step_*") if p != latest and not p.name.endswith(".tmp")]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        return len(doomed)

    # -- loading ------------------------------------------------------------------------------
    @staticmethod
    def saved_world(path: Path) -> int:
        """How many ranks wrote checkpoint ``path``; FileNotFoundError unless it holds the file of
        each of them and the shared state."""
        saved = saved_world(path)
        if saved is None or not (path / SHARED_FILE).is_file():
            raise FileNotFoundError(f"{path} lacks some of its rank_R_of_N.pt files or {SHARED_FILE}: it was not "
                                    f"written by this aurora's trainer, or is damaged; resume from an earlier checkpoint")
        return saved

    def load(self, path: Path, app_state: dict) -> tuple[dict, dict]:
        """Fill ``app_state`` in place from ``path`` (DCP reshards it to this world size);
        return (the rank state saved by this rank, or by ``rank % saved world size`` when the
        world size changed; the shared state)."""
        saved = self.saved_world(path)
        dcp.load(app_state, checkpoint_id=path)
        return _load_plain(rank_file(path, self.env.rank % saved, saved)), _load_plain(path / SHARED_FILE)


def _load_plain(path: Path):
    """A rank or shared file: tensors and plain values only (``weights_only``: no pickled object
    runs code), on the CPU whatever device saved them (a GPU index another node may not have)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f"{path} holds more than tensors and plain values, which aurora's trainer never writes "
                           f"(since the numpy RNG state is stored as a tensor): it was written by an older aurora "
                           f"or altered; resume from another checkpoint. ({str(e).splitlines()[0]})") from None
