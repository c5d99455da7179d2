"""A lock shared by the processes of one node (the ranks of a node share its checkpoint and shard
copies: the first one downloads, the others wait and reuse)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def node_lock(path: Path, blocking: bool = True):
    """An exclusive lock shared by the processes of one node (flock on a local file). Yields
    whether it was taken: always True when `blocking`, False when it is busy otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
