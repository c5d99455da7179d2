"""Local-filesystem object store (`file:///path` or a plain path).

Create-if-absent links a fully written temp file into place (`link` fails if the name exists,
like `O_EXCL`); compare-and-swap holds an exclusive `flock` on a
side lock file while it compares the content hash (the local ETag) and renames a temp file into
place. Writes go to a temp file in the same directory and are `os.replace`d, so a crash never
leaves a half-written object under its final name; `upload_file` / `download_file` do the same
with a chunked, hashing copy, so file size never bounds memory.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from ..errors import UserError
from .base import ObjectStore, sha256_hex
from .files import read_chunks, receive


def _etag(stat: os.stat_result, data: bytes) -> str:
    # Every write renames a new file into place, so (inode, mtime) changes even when the content
    # does not: unlike a pure content hash, this tag has no ABA problem.
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{sha256_hex(data)[:16]}"


class LocalStore(ObjectStore):
    def __init__(self, root_uri: str, directory: str) -> None:
        super().__init__(root_uri, pafs.LocalFileSystem(), directory)

    def _file(self, key: str) -> Path:
        return Path(self.path(key))

    def _staged(self, key: str, data: bytes) -> tuple[Path, Path]:
        """Write `data` to a durable temp file beside the target; returns (target, temp)."""
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return target, Path(temp)

    def write(self, key: str, data: bytes) -> None:
        target, temp = self._staged(key, data)
        try:
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def create(self, key: str, data: bytes) -> bool:
        # Hard-link the fully written temp file into place: link() fails if the name exists (like
        # O_EXCL) and readers never see a partially written object.
        target, temp = self._staged(key, data)
        try:
            os.link(temp, target)
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._file(key), "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, _etag(stat, data)

    def swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.parent / f".{target.name}.lock"
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.read_with_etag(key)
                current_etag = current[1] if current else None
                if current_etag != expected_etag:
                    return None
                self.write(key, data)
                return self.read_with_etag(key)[1]  # still under the lock: this is our write
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def upload_file(self, key: str, path: Path, part_size: int | None = None) -> tuple[int, str]:
        # part_size only matters to S3; a local copy is chunked anyway.
        with open(path, "rb") as handle:
            return receive(read_chunks(handle), self._file(key), self.uri(key))

    def download_file(
        self, key: str, path: Path, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> tuple[int, str]:
        with open(self._file(key), "rb") as handle:
            return receive(read_chunks(handle), Path(path), self.uri(key), expected_sha256, expected_size)

    def check(self, write: bool = True) -> None:
        # link() and flock() enforce create/swap locally: there is nothing to probe.
        root = Path(self.base)
        if root.exists() and not root.is_dir():
            raise UserError(f"storage root {self.root_uri} exists and is not a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise UserError(f"cannot create storage root {self.root_uri}: permission denied") from None
        if not os.access(root, os.W_OK):
            raise UserError(f"storage root {self.root_uri} is not writable")
