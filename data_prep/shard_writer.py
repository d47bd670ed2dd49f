"""The output directory of a make_shards run: shards of bounded size, skipped.jsonl, resumable.

Each shard is written as ``shard-NNNNNN.tar.tmp`` and renamed to ``shard-NNNNNN.tar`` once
complete; then ``.progress.json`` is rewritten (atomically) with the finished shards' stats,
the position in the input of the first sample not in them (entry index and sample number
within that entry, as one long recording may span shards), the length of ``skipped.jsonl``
at that point and the skip counts. A run that stops anywhere leaves finished shards and a
progress file that agree; the next run with the same settings and input (the fingerprint in
the progress file) deletes what came after, truncates ``skipped.jsonl`` and goes on from the
recorded position, so that its shards are the same bytes as those of an uninterrupted run.

A shard is closed when adding the next sample would take it past ``max_bytes`` (tar headers
and padding counted) or past ``max_samples``; a shard always holds at least one sample.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aurora.data.manifest import MANIFEST_NAME
from aurora.data.tars import TarWriter

SHARD_PATTERN = "shard-%06d.tar"
SKIPPED_NAME = "skipped.jsonl"
PROGRESS_NAME = ".progress.json"
PROGRESS_VERSION = 1
TAR_MTIME = 0
"""Member timestamp in the tars, fixed so that the same input gives byte-identical shards (an int:
tarfile writes a pax header for every member with a float mtime)."""
TAR_BLOCK = 512
TAR_END = 2 * TAR_BLOCK
TAR_RECORD = 20 * TAR_BLOCK
"""Python's tarfile ends an archive with two zero blocks and pads it to a whole record."""


class ResumeError(Exception):
    """The output directory cannot be written or resumed; the message says what to do."""


@dataclass
class Position:
    entry: int = 0
    """Index of the input entry holding the first sample not yet in a finished shard."""
    sample: int = 0
    """Number of that entry's samples already in finished shards."""


@dataclass
class Totals:
    shards: list[dict] = field(default_factory=list)
    """Manifest entries ``{"name", "samples", "seconds"}`` of the finished shards."""
    sample_rates: set[int] = field(default_factory=set)
    skipped_by_reason: Counter = field(default_factory=Counter)
    text_bytes_max: int = 0
    """The longest caption of the finished shards, in UTF-8 bytes (a trainer checks it against
    its model's text length before training)."""


def sample_bytes(sample: dict) -> int:
    """Bytes that ``sample`` adds to a tar: a header block per member, data padded to blocks."""
    return sum(TAR_BLOCK + -(-len(value) // TAR_BLOCK) * TAR_BLOCK
               for name, value in sample.items() if not name.startswith("__"))


def tar_bytes(content: int) -> int:
    """Size of a finished tar whose members take ``content`` bytes."""
    return -(-(content + TAR_END) // TAR_RECORD) * TAR_RECORD


def encode(sample: dict) -> dict:
    """The sample with its ``json`` member as bytes (key order kept: the same dict gives the same bytes)."""
    meta = sample["json"]
    return {**sample, "json": meta if isinstance(meta, bytes) else json.dumps(meta).encode("utf-8")}


class ShardWriter:
    """Writes samples into the shards of ``out`` and keeps ``.progress.json`` (see the module doc)."""

    def __init__(self, out: Path, fingerprint: dict, max_bytes: int, max_samples: int | None = None):
        """Prepare ``out`` for a new run, or for resuming the interrupted run recorded there
        (ResumeError when it holds something else)."""
        self.out = Path(out)
        self.fingerprint = fingerprint
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.position = Position()
        self.totals = Totals()
        self._tar = None
        self._file = None
        self._current: dict | None = None
        self._current_rates: set[int] = set()
        self._current_text = 0
        self._resumed = self._prepare()
        self._skipped = open(self.out / SKIPPED_NAME, "a", encoding="utf-8")
        if not self._resumed:
            self._checkpoint()  # from now on a re-run knows this directory is ours

    @property
    def resumed(self) -> bool:
        return self._resumed

    # -- opening --------------------------------------------------------------------------------
    def _prepare(self) -> bool:
        out = self.out
        if (out / MANIFEST_NAME).exists():
            raise ResumeError(f"--out {out} already holds shards (a finished {MANIFEST_NAME}): delete it or choose a "
                              f"new directory")
        progress_path = out / PROGRESS_NAME
        if not progress_path.exists():
            finished = sorted(out.glob("shard-*.tar"))
            if finished:
                raise ResumeError(f"--out {out} already holds shards ({finished[0].name}, ...) but no record of an "
                                  f"interrupted run ({PROGRESS_NAME}): delete them or choose a new directory")
            out.mkdir(parents=True, exist_ok=True)
            for tmp in out.glob("shard-*.tar.tmp"):
                tmp.unlink()
            (out / SKIPPED_NAME).write_text("")
            return False
        try:
            progress = json.loads(progress_path.read_text())
            recorded = progress["fingerprint"]
            shards, position, skipped = progress["shards"], progress["next"], progress["skipped"]
            rates, skipped_bytes, by_reason = progress["sample_rates"], skipped["bytes"], skipped["by_reason"]
        except (OSError, ValueError, KeyError, TypeError) as exn:
            raise ResumeError(f"{progress_path} cannot be read ({exn}): delete {out} and start again") from None
        if progress.get("version") != PROGRESS_VERSION or recorded != self.fingerprint:
            raise ResumeError(f"--out {out} holds an interrupted run of {self._difference(recorded)}: re-run with the "
                              f"same arguments and input to resume it, or delete {out} / choose a new directory")
        names = {shard["name"] for shard in shards}
        missing = [name for name in sorted(names) if not (out / name).is_file()]
        skipped_path = out / SKIPPED_NAME
        if missing or not skipped_path.is_file() or skipped_path.stat().st_size < skipped_bytes:
            what = f"shard {missing[0]}" if missing else f"the start of {SKIPPED_NAME}"
            raise ResumeError(f"--out {out}: {what}, recorded as finished in {PROGRESS_NAME}, is missing: delete {out} "
                              f"and start again")
        for leftover in [*out.glob("shard-*.tar.tmp"), *out.glob("shard-*.tar")]:
            if leftover.name not in names:
                leftover.unlink()
        with open(skipped_path, "r+b") as f:
            f.truncate(skipped_bytes)
        self.totals = Totals(shards, set(rates), Counter(by_reason), progress.get("text_bytes_max", 0))
        self.position = Position(position["entry"], position["sample"])
        return True

    def _difference(self, recorded) -> str:
        if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict) or recorded == self.fingerprint:
            return "another version of make_shards"
        old, new = recorded["settings"], self.fingerprint["settings"]
        changed = [f"{key} {old.get(key)!r} (now {new.get(key)!r})" for key in sorted(set(old) | set(new))
                   if old.get(key) != new.get(key)]
        if changed:
            return "other arguments: " + ", ".join(changed)
        return ("the same arguments but another input listing (files added, removed or renamed, or the "
                "listing edited)")

    # -- writing --------------------------------------------------------------------------------
    def add(self, sample: dict, entry: int, number: int) -> None:
        """Write ``sample``, the ``number``-th sample of input entry ``entry``."""
        meta = sample["json"] if isinstance(sample["json"], dict) else json.loads(sample["json"])
        sample = encode(sample)
        size = sample_bytes(sample)
        current = self._current
        if current is not None and (
            tar_bytes(self._tar.tarstream.offset + size) > self.max_bytes
            or (self.max_samples is not None and current["samples"] >= self.max_samples)
        ):
            self._close_shard(Position(entry, number))
        if self._current is None:
            self._open_shard()
        self._tar.write(sample)
        self._current["samples"] += 1
        self._current["seconds"] += meta["duration"]
        self._current_rates.add(meta["sample_rate"])
        self._current_text = max(self._current_text, len(meta.get("text", "").encode("utf-8")))

    def skip(self, records: list[dict]) -> None:
        """Append skip records to skipped.jsonl and count them by reason."""
        for record in records:
            self._skipped.write(json.dumps(record) + "\n")
            self.totals.skipped_by_reason[record["reason"]] += 1

    def finish(self, entries: int) -> Totals:
        """Close the last shard (all ``entries`` input entries consumed) and return the totals."""
        if self._current is not None:
            self._close_shard(Position(entries, 0))
        self._skipped.close()
        return self.totals

    def close(self) -> None:
        """Stop without finishing (after an error): the shard being written stays a .tmp."""
        if self._tar is not None:
            try:
                self._tar.close()  # ends the .tmp tidily; it is rewritten on resume all the same
            except Exception:  # noqa: BLE001 - e.g. a full disk, the error being handled already
                pass
            self._file.close()
            self._tar = self._file = None
        if not self._skipped.closed:
            self._skipped.close()

    def forget(self) -> None:
        """Remove the progress record (the run is complete, or there is nothing to resume)."""
        (self.out / PROGRESS_NAME).unlink(missing_ok=True)

    def _open_shard(self) -> None:
        name = SHARD_PATTERN % len(self.totals.shards)
        self._file = open(self.out / (name + ".tmp"), "wb")
        self._tar = TarWriter(self._file, mtime=TAR_MTIME)
        self._current = {"name": name, "samples": 0, "seconds": 0.0}
        self._current_rates = set()
        self._current_text = 0

    def _close_shard(self, next_position: Position) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._tar = self._file = None
        name = self._current["name"]
        os.replace(self.out / (name + ".tmp"), self.out / name)
        self.totals.shards.append({**self._current, "seconds": round(self._current["seconds"], 3)})
        self.totals.sample_rates |= self._current_rates
        self.totals.text_bytes_max = max(self.totals.text_bytes_max, self._current_text)
        self._current = None
        self.position = next_position
        self._checkpoint()

    def _checkpoint(self) -> None:
        self._skipped_flush()
        progress = {
            "version": PROGRESS_VERSION,
            "fingerprint": self.fingerprint,
            "shards": self.totals.shards,
            "next": {"entry": self.position.entry, "sample": self.position.sample},
            "skipped": {"bytes": (self.out / SKIPPED_NAME).stat().st_size,
                        "by_reason": dict(sorted(self.totals.skipped_by_reason.items()))},
            "sample_rates": sorted(self.totals.sample_rates),
            "text_bytes_max": self.totals.text_bytes_max,
        }
        path = self.out / PROGRESS_NAME
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(progress, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _skipped_flush(self) -> None:
        skipped = getattr(self, "_skipped", None)
        if skipped is not None and not skipped.closed:
            skipped.flush()
            os.fsync(skipped.fileno())
