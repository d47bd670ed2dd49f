"""What the per-shard data jobs share (``data_prep.tokenize``, ``make_pairs``, ``ref_logprobs``):
one output shard per input shard, finished records that let a re-run skip done shards, the
test hook that kills a job mid-shard, the device option, and one-line errors.

A job writes each output shard to ``NAME.tmp``, renames it into place, then writes its record
``NAME.done.json`` (tmp + rename too). A re-run keeps a shard whose record matches the tar on
disk (its size) and the source shard (its size); an interrupted shard (only ``NAME.tmp``, or a
tar without record) is redone. A record made with other settings (``expect``) stops the run with
an error rather than mixing outputs, unless the job asks to redo such shards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from aurora.config import ConfigError
from aurora.distributed import read_launch_env

DONE_SUFFIX = ".done.json"
RECORD_VERSION = 1
FINAL_WAIT_S = 7 * 24 * 3600
"""Collective timeout: a rank that finishes its shards waits this long for the others."""


class JobError(Exception):
    """Bad input or a bad output directory; the message says what is wrong and what to do."""


def record_path(out: Path, name: str, suffix: str = DONE_SUFFIX) -> Path:
    return out / (name + suffix)


def write_record(out: Path, record: dict, suffix: str = DONE_SUFFIX) -> None:
    path = record_path(out, record["name"], suffix)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def finished_record(out: Path, url: str, expect: dict, what: str, redo_others: bool = False,
                    suffix: str = DONE_SUFFIX) -> dict | None:
    """The record (``NAME + suffix``) of the output shard for ``url`` when it is finished and
    still matches the tar on disk and the source; when it was made with other settings
    (``expect``): None if ``redo_others``, else JobError (the output set, ``what``, would mix the two)."""
    name = os.path.basename(url)
    path = record_path(out, name, suffix)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION or record.get("name") != name:
        return None
    for key, value in expect.items():
        if record.get(key) != value:
            if redo_others:
                return None
            raise JobError(
                f"{path} was made with {key}={record.get(key)!r}, this run has {key}={value!r}: the {what} "
                f"would mix the two. Rerun with the settings of the first run, or give a new --out (or delete {out})")
    tar = out / name
    if not tar.is_file() or tar.stat().st_size != record.get("tar_bytes"):
        return None
    if os.path.getsize(url) != record.get("source_bytes"):
        return None
    return record


def longest_text(records: list[dict]) -> int | None:
    """The longest caption over the shards' records (``text_bytes_max``), for the manifest; None
    when a record predates the count (shards finished by an older version)."""
    longest = [r.get("text_bytes_max") for r in records]
    return None if None in longest else max(longest)


def fault_kill_shard(env_var: str) -> int | None:
    """Test hook: the index of the shard whose job SIGKILLs itself mid-shard (``env_var``), in a
    job's first attempt only (torchrun's ``TORCHELASTIC_RESTART_COUNT`` is 0)."""
    value = os.environ.get(env_var, "")
    if not value or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    return int(value)


def pick_device(arg: str | None, default: torch.device) -> torch.device:
    """``--device`` (cpu, cuda: this rank's local GPU, cuda:N), or ``default``."""
    if arg is None:
        return default
    if arg == "cuda":
        arg = f"cuda:{read_launch_env()['local_rank'] % max(torch.cuda.device_count(), 1)}"
    try:
        device = torch.device(arg)
    except RuntimeError:
        raise JobError(f"--device {arg!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JobError(f"--device {arg}: this machine has no CUDA device; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise JobError(f"--device {arg}: only cpu and cuda are supported")
    return device


def run_job(prog: str, run: Callable[[], None]) -> None:
    """``run()``; bad input (JobError, ConfigError) ends it with one line, no traceback, exit
    status 2. Every rank says it (a rank may be the only one that cannot see a file, e.g. on a
    node-local disk), tagged with its rank under a launcher."""
    try:
        run()
    except (JobError, ConfigError, FileNotFoundError) as exn:
        launch = read_launch_env()
        where = f"[rank {launch['rank']}] " if launch["world_size"] > 1 else ""
        print(f"{prog}: error: {where}{exn}", file=sys.stderr, flush=True)
        sys.exit(2)
