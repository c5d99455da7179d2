"""The node's shard cache: verified local copies of training shards under a byte limit.

Shards are content-addressed (`<sha256>.arrow`) in one directory shared by every process of the
node (the ranks of every run on it). The rules, all enforced with `flock` so they hold across
processes and release themselves when a process dies:

- **In use means locked.** A process that reads a shard (or has fetched it ahead of need) holds a
  shared lock on its file; eviction takes an exclusive non-blocking lock, so a shard in use is
  never deleted.
- **One download per shard per node.** A per-shard lock makes one process download (streamed,
  checked against the manifest's sha256 and size) while the others wait and reuse the file.
- **The limit covers downloads in flight.** Before a download, room is made under the node's
  cache lock and a reservation (`<sha256>.reserved`, the expected size) is written; the bytes on
  disk (finished shards + partial downloads) never exceed the sum of shards + reservations, which
  is kept under the limit. A reservation whose downloader died (its shard lock is free) is stale.
- **Least recently used goes first, other datasets before this run's.** A shard's mtime is
  touched whenever a process starts using it; eviction takes unlocked shards not in this run's
  manifests first (other dataset versions, other runs), then this run's, oldest first.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data.shards import CorruptShardError
from ..errors import UserError
from ..records import ShardEntry
from ..storage import ObjectStore
from .node_lock import node_lock

DEFAULT_FRACTION = 0.5  # of the cache filesystem's free space (+ shards already cached): the default limit
# Waiting for other processes to release shards before giving up: well under the default collective
# timeout (600 s), so a cache too small fails with its own message, not as a collective timeout.
ROOM_TIMEOUT_S = 120.0


class CacheFullError(UserError):
    """The shards in use on this node do not fit under the cache limit."""


@dataclass
class Held:
    """A shard this process holds: the open file whose shared lock marks it in use."""

    path: Path
    handle: object  # the open file (its flock is the pin)

    def release(self) -> None:
        self.handle.close()  # closing drops the flock


class ShardCache:
    def __init__(self, directory: Path, limit: int | None, own: Iterable[str] = ()) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.limit = int(limit) if limit else node_default_limit(directory)
        self.own = set(own)  # sha256 of this run's shards: evicted only after everyone else's
        self.evictions = 0
        self.downloaded_bytes = 0

    # -- what is on disk ---------------------------------------------------------------------------
    def usage(self) -> int:
        """Bytes of finished shards and partial downloads in the cache directory (a file renamed
        from its partial name while the directory is listed is counted once)."""
        return sum(size for _, size, _ in _entries(self.directory, (".arrow", ".tmp")))

    def _accounted(self) -> int:
        """Finished shards plus live reservations (what the limit is checked against).

        Reservations are listed before shards: a downloader renames its shard into place before
        it drops its reservation, so a shard finishing meanwhile is counted at least once."""
        reserved = sum(self._live_reservations().values())
        return reserved + sum(size for _, size, _ in _entries(self.directory, (".arrow",)))

    def _live_reservations(self) -> dict[Path, int]:
        live = {}
        for path in self.directory.glob("*.reserved"):
            sha = path.name.removesuffix(".reserved")
            if _locked(self.directory / f"{sha}.lock"):
                try:
                    live[path] = int(path.read_text() or 0)
                except (FileNotFoundError, ValueError):
                    continue
            else:  # its downloader died: the reservation and any partial file are garbage
                path.unlink(missing_ok=True)
                for partial in self.directory.glob(f".{sha}.arrow.*.tmp"):
                    partial.unlink(missing_ok=True)
        return live

    # -- using a shard -----------------------------------------------------------------------------
    def hold(self, store: ObjectStore, entry: ShardEntry, wait: bool = True) -> Held | None:
        """The shard's local file, locked in use (downloaded first if this node lacks it). With
        `wait=False`, None when another process is downloading it (a prefetcher moves on)."""
        path = self.directory / f"{entry.sha256}.arrow"
        while True:
            held = _hold_existing(path)
            if held is not None:
                return held
            with node_lock(self.directory / f"{entry.sha256}.lock", blocking=wait) as taken:
                if not taken:
                    return None
                held = _hold_existing(path)  # another process finished it while this one waited
                if held is not None:
                    return held
                for partial in self.directory.glob(f".{entry.sha256}.arrow.*.tmp"):
                    partial.unlink(missing_ok=True)  # a downloader that died holding this lock left it
                reservation = self.directory / f"{entry.sha256}.reserved"
                self._make_room(entry.bytes, reservation)
                try:
                    store.download_file(entry.key, path, entry.sha256, entry.bytes)
                    self.downloaded_bytes += entry.bytes
                    held = _hold_existing(path)  # locked before the download lock is released
                except ValueError as error:
                    raise CorruptShardError(f"shard {entry.uri} is corrupt: {error}") from None
                finally:
                    reservation.unlink(missing_ok=True)
                if held is not None:
                    return held

    def _make_room(self, size: int, reservation: Path) -> None:
        """Evict until `size` more bytes fit, then reserve them; waits while the shards in use
        leave no room (another rank still reads them), and fails with one line after a timeout."""
        if size > self.limit:
            raise CacheFullError(
                f"shard of {size} bytes does not fit the node cache limit of {self.limit} bytes "
                f"({self.directory}): raise train.cache_limit"
            )
        deadline = time.monotonic() + ROOM_TIMEOUT_S
        while True:
            with node_lock(self.directory / ".evict.lock"):
                used = self._accounted()
                for path in self._eviction_order():
                    if used + size <= self.limit:
                        break
                    freed = _evict(path)
                    used -= freed
                    self.evictions += bool(freed)
                if used + size <= self.limit:
                    reservation.write_text(str(size))
                    return
            if time.monotonic() > deadline:
                raise CacheFullError(
                    f"node cache {self.directory}: {used} of {self.limit} bytes are shards in use or being "
                    f"downloaded and {size} more are needed: raise train.cache_limit (it must hold "
                    "(2 x shuffle_window + prefetch) shards per dataset)"
                )
            time.sleep(0.2)

    def _eviction_order(self) -> list[Path]:
        entries = _entries(self.directory, (".arrow",))
        # Other datasets' shards first, then this run's; least recently used first within each.
        entries.sort(key=lambda e: (e[0].name.removesuffix(".arrow") in self.own, e[2]))
        return [path for path, _, _ in entries]


def node_default_limit(directory: Path) -> int:
    """`default_limit`, computed once per cache directory (by the first process, under the cache
    lock) and read by the others, so every rank of the node keeps the same limit although the
    free space shrinks as they download. `SORA_CACHE_LIMIT` is read every time."""
    if os.environ.get("SORA_CACHE_LIMIT"):
        return default_limit(directory)
    recorded = directory / ".default-limit"
    with node_lock(directory / ".evict.lock"):
        try:
            return int(recorded.read_text())
        except (FileNotFoundError, ValueError):
            limit = default_limit(directory)
            recorded.write_text(str(limit))
            return limit


def default_limit(directory: Path) -> int:
    """The node's limit: `SORA_CACHE_LIMIT` (bytes or e.g. "1500GB", set where the node's disk is
    known: the cluster assets), else half of what the cache filesystem could give the shards
    (free space plus shards already cached)."""
    configured = os.environ.get("SORA_CACHE_LIMIT")
    if configured:
        from pydantic import ByteSize, TypeAdapter, ValidationError

        try:
            return int(TypeAdapter(ByteSize).validate_python(configured))
        except ValidationError:
            raise UserError(f"SORA_CACHE_LIMIT={configured!r} is not a size (e.g. 1500GB or 1610612736000)") from None
    cached = sum(size for _, size, _ in _entries(directory, (".arrow",)))
    return int(DEFAULT_FRACTION * (shutil.disk_usage(directory).free + cached))


def _entries(directory: Path, suffixes: tuple[str, ...]) -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of the files with these suffixes; files deleted meanwhile are skipped."""
    found, inodes = [], set()
    for path in directory.iterdir():
        if path.name.endswith(suffixes):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_ino not in inodes:
                inodes.add(stat.st_ino)
                found.append((path, stat.st_size, stat.st_mtime))
    return found


def _hold_existing(path: Path) -> Held | None:
    """Open and share-lock `path` if it exists, checking that eviction did not unlink it between
    the open and the lock (then the lock protects a deleted file: try again)."""
    while True:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return None
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            if os.fstat(handle.fileno()).st_ino == path.stat().st_ino:
                os.utime(path)  # least recently used: mtime is the last start of use
                return Held(path, handle)
        except FileNotFoundError:
            pass
        handle.close()


def _evict(path: Path) -> int:
    """Delete `path` unless a process holds it; returns the bytes freed."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return 0
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return 0  # in use
            raise
        size = os.fstat(handle.fileno()).st_size
        path.unlink(missing_ok=True)
        return size


def _locked(path: Path) -> bool:
    """Whether some process holds the exclusive lock on `path` (a download in progress)."""
    try:
        handle = open(path, "a")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
