"""Reading one shard: raw samples (member bytes grouped by key) from a WebDataset tar."""

from __future__ import annotations

import os
import tarfile
import zlib
from typing import Callable, Iterator

from webdataset.tariterators import group_by_keys, tar_file_iterator

from aurora.data.skips import READ_ERROR

OnError = Callable[[str, str, str], None]
"""Called as ``on_error(reason, shard_name, detail)`` for every problem met."""


def read_shard(url: str, on_error: OnError, expected: int | None = None) -> Iterator[dict]:
    """Yield ``{"__key__", "__url__", <ext>: bytes, ...}`` per sample of the tar at ``url``.

    Never raises for bad data: an unreadable tar, or the unreadable rest of one, is reported
    once as ``read_error`` and the shard ends there. ``expected`` (the manifest's sample count)
    catches a tar truncated at a member boundary, which tarfile reads as a clean end.
    """
    name = os.path.basename(url)
    failed = False

    def stop_shard(exn: Exception) -> bool:
        nonlocal failed
        failed = True
        on_error(READ_ERROR, name, f"cannot read the rest of the shard: {exn}")
        return False

    def skip_member(exn: Exception) -> bool:
        on_error(READ_ERROR, name, str(exn))
        return True

    count = 0
    try:
        with open(url, "rb") as stream:
            members = ({**member, "__url__": url} for member in tar_file_iterator(stream, handler=stop_shard))
            for sample in group_by_keys(members, handler=skip_member):
                count += 1
                yield sample
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exn:
        stop_shard(exn)
    if not failed and expected is not None and count < expected:
        on_error(READ_ERROR, name, f"the tar ends after {count} of the {expected} samples its manifest lists "
                                   f"(truncated?)")
