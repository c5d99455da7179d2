"""Streaming helpers for moving whole files between local disk and a store.

Checkpoint shards and exports can be tens of GB, so files move in fixed-size chunks, hashed as
they pass, and land under their final name only by an atomic rename of a complete temp file in
the same directory: a reader sees the old file or the whole new one, never a prefix.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 1024 * 1024  # per read/write: memory stays at a few chunks whatever the file size


def read_chunks(handle: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while chunk := handle.read(chunk_size):
        yield chunk


def hash_stream(handle: BinaryIO) -> tuple[int, str]:
    """(size, sha256 hex) of what is left in `handle`, read chunk by chunk."""
    digest, size = hashlib.sha256(), 0
    for chunk in read_chunks(handle):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def receive(
    chunks: Iterable[bytes],
    path: Path,
    source: str,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
) -> tuple[int, str]:
    """Write `chunks` to a temp file beside `path`, check it, then rename it into place.

    `source` names the object in error messages. On a size or sha256 mismatch (or any error) the
    temp file is deleted and `path` is left as it was. Returns (size, sha256 hex).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())  # durable before the rename makes it visible
        sha = digest.hexdigest()
        if expected_size is not None and size != expected_size:
            raise ValueError(f"{source}: got {size} bytes, expected {expected_size}")
        if expected_sha256 is not None and sha != expected_sha256:
            raise ValueError(f"{source}: sha256 {sha} does not match the expected {expected_sha256}")
        os.replace(temp, path)
        return size, sha
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def check_unchanged(handle: BinaryIO, before: os.stat_result, path: Path) -> None:
    """Raise if the file behind `handle` was modified since `before` (the hash would not match)."""
    after = os.fstat(handle.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise ValueError(f"{path} changed while it was being uploaded; upload it again once it is complete")
