"""A lock shared by the processes of one node (the ranks of a node share its checkpoint and shard
copies: the first one downloads, the others wait and reuse)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def node_lock(path: Path):
    """An exclusive lock shared by the processes of one node (flock on a local file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
