"""Reading samples of a WebDataset tar by number.

A sample is a run of consecutive members sharing a key (``KEY.flac`` + ``KEY.json``), grouped
by webdataset's own ``base_plus_ext`` rule. webdataset's tar iterator can only stream a tar
from its first byte; the loader needs to start at any sample (contiguous reader shares begin
mid-shard, a resume refetches a shuffle buffer), so a shard is indexed by walking its tar
headers with ``tarfile`` (a seek per member; no data read) and members are read by offset.

Bad data never raises out of here as an exception the loader cannot handle: a sample that
cannot be read is a ``BadSample`` with reason ``read_error`` (the tar is missing, not a tar,
truncated, or holds fewer samples than its manifest lists), or ``too_large`` (a member the
reader wants is larger than its cap; members it does not want are never read).

Writers write shards with ``TarWriter``, which refuses the keys readers refuse.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator

import webdataset as wds
from webdataset.tariterators import base_plus_ext

from aurora.data.members import key_problem
from aurora.data.skips import READ_ERROR, TOO_LARGE, BadSample


@dataclass
class ShardIndex:
    url: str
    samples: list[tuple[str, dict[str, tuple[int, int]]]]
    """Per sample: its key and ``{ext: (data offset, size)}``."""
    problem: str | None
    """Why the walk ended before the end of the tar, if it did (the samples after it are lost)."""

    @property
    def name(self) -> str:
        return os.path.basename(self.url)


def index_shard(url: str) -> ShardIndex:
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        file_size = os.path.getsize(url)
        with tarfile.open(url, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                if member.offset_data + member.size > file_size:
                    return ShardIndex(url, samples, f"{member.name} is cut off at byte {file_size} (truncated tar)")
                if not samples or samples[-1][0] != key or ext in samples[-1][1]:
                    samples.append((key, {}))
                samples[-1][1][ext] = (member.offset_data, member.size)
            end = tar.offset
        return ShardIndex(url, samples, trailer_problem(url, end, file_size))
    except (OSError, tarfile.TarError, EOFError) as exn:
        return ShardIndex(url, samples, f"cannot read the tar: {exn}")


def trailer_problem(url: str, offset: int, size: int) -> str | None:
    """Why the bytes from ``offset`` (where tarfile found no further header) to the end of the
    file are not a tar's end-of-archive zero blocks, or None when they are. tarfile takes a
    corrupt or cut header for the end of the archive; this tells the two apart."""
    if offset >= size:
        return f"the tar stops at byte {size} without its end-of-archive blocks (truncated at a member boundary?)"
    with open(url, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            if chunk.strip(b"\0"):
                return f"unreadable tar header at byte {offset} of {size} (corrupt data; the rest of the shard is lost)"
    return None


class ShardReader:
    """Random access to the samples of one tar; ``expected`` is the manifest's count."""

    def __init__(self, url: str, expected: int | None = None):
        self.index = index_shard(url)
        self.expected = expected
        self._file = None

    def __len__(self) -> int:
        return len(self.index.samples)

    def sample(self, number: int, exts: tuple[str, ...] | None = None, max_bytes: int | None = None) -> dict:
        """``{"__key__", "__url__", <ext>: bytes, ...}`` of sample ``number``, or BadSample. Only
        the members ``exts`` (None: all) are read; one larger than ``max_bytes`` is too_large."""
        if number >= len(self.index.samples):
            readable = len(self.index.samples)
            if self.index.problem:
                why = self.index.problem
            else:
                why = f"the tar ends after {readable} samples" + (
                    f" of the {self.expected} its manifest lists (truncated?)" if self.expected else "")
            raise BadSample(READ_ERROR, f"sample {number} is lost: {why}")
        key, members = self.index.samples[number]
        wanted = {ext: where for ext, where in members.items() if exts is None or ext in exts}
        for ext, (_, size) in wanted.items():
            if max_bytes is not None and size > max_bytes:
                raise BadSample(TOO_LARGE, f"{key}.{ext} is {size / 1e6:.1f} MB, more than data.max_member_mb="
                                           f"{max_bytes / 1e6:g}: not read (raise the limit, or drop the sample)")
        sample = {"__key__": key, "__url__": self.index.url}
        try:
            if self._file is None:
                self._file = open(self.index.url, "rb")
            for ext, (offset, size) in wanted.items():
                self._file.seek(offset)
                sample[ext] = self._file.read(size)
                if len(sample[ext]) != size:
                    raise OSError(f"{key}.{ext}: read {len(sample[ext])} of {size} bytes")
        except OSError as exn:
            raise BadSample(READ_ERROR, f"cannot read sample {number}: {exn}") from None
        return sample

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


OnError = Callable[[str, str, str], None]
"""Called as ``on_error(reason, shard_name, detail)`` for every sample that cannot be read."""


def read_shard(url: str, on_error: OnError, expected: int | None = None, exts: tuple[str, ...] | None = None,
               max_bytes: int | None = None) -> Iterator[dict]:
    """Every readable sample of a tar, front to back (only its members ``exts``, each of at most
    ``max_bytes``: see ``ShardReader.sample``); the others go to ``on_error``: one call per
    sample the manifest lists but the tar lost, or (no count to lose from) one for the unreadable
    rest of the tar."""
    reader = ShardReader(url, expected)
    listed = expected or 0
    try:
        for number in range(max(len(reader), listed)):
            try:
                yield reader.sample(number, exts, max_bytes)
            except BadSample as bad:
                on_error(bad.reason, reader.index.name, bad.detail)
    finally:
        reader.close()
    if reader.index.problem and len(reader) >= listed:
        on_error(READ_ERROR, reader.index.name, reader.index.problem)


class TarWriter(wds.TarWriter):
    """webdataset's TarWriter, refusing (ValueError) a sample whose key readers refuse
    (aurora.data.members.key_problem): its members would be extracted outside the tar's folder."""

    def write(self, obj: dict) -> int:
        problem = key_problem(obj["__key__"])
        if problem:
            raise ValueError(f"cannot write sample: {problem}")
        return super().write(obj)
