"""The `ObjectStore` interface shared by the local and S3 back ends.

Bulk reads, writes and listings go through `pyarrow.fs` (one code path for both back ends, and the
same filesystem object serves Arrow IPC readers); `list_objects`, which carries each file's version
(what source discovery fingerprints), lists S3 with boto3 (one request per 1000 keys, ETags
included). The two operations that make publishing safe are back-end specific: `create`
(create-if-absent) and `swap` (compare-and-swap on an ETag).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from ..errors import UserError


@dataclass(frozen=True)
class StorageSettings:
    """How to reach object storage. Picklable, so Ray workers can open their own store.

    endpoint_url: S3-compatible endpoint (MinIO, moto, R2...); default AWS. Falls back to the
        `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` environment variables.
    region: S3 region; falls back to `AWS_REGION` / `AWS_DEFAULT_REGION`, then us-east-1.
    max_attempts: attempts per request (the first one included) for throttling, 5xx and
        connection errors (exponential backoff).
    Credentials come from the usual AWS chain (environment, profile, instance role) and are never
    stored here or printed.
    """

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 8


@dataclass(frozen=True)
class ListedObject:
    """A file found by `ObjectStore.list_objects`: its key, size in bytes and version (what a change
    of the file changes: the ETag on S3, the mtime in ns on a local filesystem)."""

    key: str
    size: int
    version: str


def _mtime_version(info: pafs.FileInfo) -> str:
    return str(info.mtime_ns) if info.mtime_ns is not None else ""


class ObjectStore(ABC):
    """Keys are '/'-separated paths relative to the store's root URI."""

    def __init__(self, root_uri: str, fs: pafs.FileSystem, base: str) -> None:
        self.root_uri = root_uri.rstrip("/")
        self.fs = fs
        self.base = base.rstrip("/")

    # -- addressing -------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"{self.root_uri}/{key}" if key else self.root_uri

    def path(self, key: str) -> str:
        """Path of `key` inside `self.fs` (for pyarrow readers and writers)."""
        return f"{self.base}/{key}" if key else self.base

    def key_of(self, uri: str) -> str:
        """Inverse of `uri()`; raises if the URI is outside this store."""
        if not uri.startswith(self.root_uri + "/"):
            raise UserError(f"{uri} is not under the storage root {self.root_uri}")
        return uri[len(self.root_uri) + 1 :]

    # -- plain operations -------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(key)) as stream:
                return stream.read()
        except FileNotFoundError:
            raise
        except OSError as error:
            raise self.translate_error(error, key) from None

    def exists(self, key: str) -> bool:
        info = self.fs.get_file_info(self.path(key))
        return info.type != pafs.FileType.NotFound

    def list(self, prefix: str) -> list[str]:
        """Keys of all files under `prefix` (recursive), sorted."""
        return sorted(self.list_sizes(prefix))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """{key: size} of all files under `prefix` (recursive), from the listing alone (on S3 one
        request per 1000 keys, not one per key)."""
        selector = pafs.FileSelector(self.path(prefix), recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        start = len(self.base) + 1
        return {info.path[start:]: info.size for info in infos if info.type == pafs.FileType.File}

    def list_objects(self, prefix: str = "") -> list[ListedObject]:
        """Every file under `prefix` (recursive), or `prefix` itself when it is a file (then its key
        is `prefix`; "" for a store whose root is a file), with size and version, sorted by key:
        one listing pass, no request per file. Local version: mtime in ns (S3: the ETag)."""
        info = self.fs.get_file_info(self.path(prefix))
        if info.type == pafs.FileType.File:
            return [ListedObject(prefix, info.size or 0, _mtime_version(info))]
        if info.type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(prefix), recursive=True))
        start = len(self.base) + 1
        found = [
            ListedObject(i.path[start:], i.size or 0, _mtime_version(i)) for i in infos if i.type == pafs.FileType.File
        ]
        return sorted(found, key=lambda o: o.key)

    def size(self, key: str) -> int:
        return self.fs.get_file_info(self.path(key)).size

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of `key` from byte `start` (one ranged GET on S3)."""
        try:
            with self.fs.open_input_file(self.path(key)) as handle:
                return handle.read_at(length, start)
        except FileNotFoundError:
            raise
        except OSError as error:
            raise self.translate_error(error, key) from None

    def delete_prefix(self, prefix: str) -> None:
        """Delete every file under `prefix` (batched deletes on S3); a missing prefix is fine."""
        self.fs.delete_dir_contents(self.path(prefix), missing_dir_ok=True)

    def delete(self, key: str) -> None:
        self.fs.delete_file(self.path(key))

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write `data` atomically (readers see the old object or the whole new one)."""

    # -- whole files, streamed ----------------------------------------------------------------
    @abstractmethod
    def upload_file(self, key: str, path: Path, part_size: int | None = None) -> tuple[int, str]:
        """Upload the local file `path` to `key` in chunks, hashing as it reads; returns (size, sha256 hex).

        Memory stays bounded whatever the file size. On S3 a file larger than `part_size` (default
        `multipart.PART_SIZE`, at least 5 MiB) goes up as a multipart upload, aborted on any error;
        readers see the old object or the whole new one.
        """

    @abstractmethod
    def download_file(
        self, key: str, path: Path, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> tuple[int, str]:
        """Stream `key` into a temp file beside `path`, hashing as it goes, then rename it into place.

        Returns (size, sha256 hex). If `expected_size` or `expected_sha256` does not match, the temp
        file is deleted, `path` is left as it was and `ValueError` names the key and the mismatch.
        A missing key raises `FileNotFoundError`.
        """

    # -- conditional operations ------------------------------------------------------------
    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create `key` only if absent. True if this call created it, False if it already existed.

        A create whose answer was lost and that the client retried counts as created when the key
        holds exactly `data` (see `s3.py`), so callers write bodies unique to the writer.
        """

    @abstractmethod
    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """Content and version tag of `key`, or None if absent."""

    @abstractmethod
    def swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        """Replace `key` only if its tag is still `expected_etag` (None: only if absent).

        Returns the new tag when this call wrote, None when the precondition failed. On S3 the
        tag is the content's MD5, so a swap that rewrites identical bytes is indistinguishable from
        no write (ABA): callers write content that changes on every swap (our pointers and leases
        embed a version or epoch and an expiry).
        """

    @abstractmethod
    def check(self, write: bool = True) -> None:
        """Fail with a clear `UserError` if the root is unreachable (missing bucket, credentials).

        With `write` (opening the store to publish), also make sure the back end honours the
        conditional writes `create` and `swap` rely on: S3 probes once per process per
        bucket/prefix that `If-None-Match: *` and `If-Match` are enforced (see `s3.py`); pass
        `write=False` for read-only uses to skip the probe.
        """

    def translate_error(self, error: Exception, key: str) -> Exception:
        return error


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
