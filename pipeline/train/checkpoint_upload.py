"""Asynchronous checkpoints: a rank's upload and rank 0's commit run in a background thread while
training continues.

    save k:   wait for k-1 (backpressure) | engine.save (local, blocking) | thread: upload k ...
    thread:   upload this rank's files -> its listing (`RankUpload`) -> delete the local copy
              rank 0 also: every rank's listing there -> trainer state, lease check, COMMITTED,
              GC, unpin the warm-start parent
    main:     every step a non-blocking `poll` (re-raises a failure); a later save, the end of the
              run, a drain or the export `wait` for it (every rank, then one barrier)

No torch collective runs in the thread (two threads on one process group deadlock or interleave):
the ranks' listings meet in the store, where rank 0's thread reads them. So the commit needs no
collective and lands as soon as the last rank's files are up, whatever the main thread is doing;
the only collective the ranks add is a barrier where they wait for a checkpoint anyway. A listing
names the worker-group attempt (`attempt`, agreed once at start), so one left by a killed attempt
is never taken for this one's while the folder of the same step and lease epoch is rewritten.

At most one upload is in flight per rank, and a new save waits for the previous upload (and, on
rank 0, its commit) before DeepSpeed writes the new local copy: each rank holds at most one
checkpoint on local disk, as with synchronous saves. A failed upload or commit is raised in the
main thread at the next poll or wait (the attempt fails and resumes from the last commit); a rank
whose peers' listings do not all arrive within `timeout_s` of its own upload (a hung or dead peer)
fails the same way, as the all-gather of synchronous saves did under the collective timeout, and so
does a rank whose own upload thread makes no progress for `timeout_s` (a hung store). A kill
at any moment leaves the previous commit the newest valid checkpoint: COMMITTED is written only
after every rank's listing is in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..keys import CheckpointId, RunKeys
from ..records import CommittedFile, RankUpload, TrainerState
from ..storage import ObjectStore
from . import checkpoint as ckpt

log = logging.getLogger(__name__)

# Rank 0 polls the store for the other ranks' listings: often at first (they finish about when it
# does), then once a second (a LIST request each).
_POLL_FIRST_S, _POLL_MAX_S = 0.05, 1.0

Commit = Callable[[CheckpointId, list[CommittedFile], TrainerState], None]


class Abandoned(Exception):
    """The main thread gave up on the upload (its attempt failed): nothing is committed."""


@dataclass
class Upload:
    """One checkpoint going up from this rank (and, on rank 0, being committed)."""

    checkpoint: CheckpointId
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None  # from the end of the local save to the end of the upload (rank 0: commit)
    progress: float = field(default_factory=time.monotonic)  # the thread's last sign of life (a file up, a poll)
    error: BaseException | None = None
    thread: threading.Thread | None = None


class BackgroundUploads:
    """This rank's background upload thread (one at a time) and, on rank 0, the commit."""

    def __init__(
        self,
        store: ObjectStore,
        keys: RunKeys,
        rank: int,
        world: int,
        attempt: str,
        commit: Commit,
        timeout_s: float,
        fault: Callable[[int], None] | None = None,  # tests: called with the step after each file
    ) -> None:
        self.store, self.keys, self.rank, self.world, self.attempt = store, keys, rank, world, attempt
        self.commit, self.timeout_s, self.fault = commit, timeout_s, fault
        self.current: Upload | None = None
        self.stop = threading.Event()

    def start(self, checkpoint: CheckpointId, local: Path, state: TrainerState | None) -> None:
        """Upload `local` (this rank's save of `checkpoint`, deleted once up) in the background;
        rank 0 commits with `state` (taken at the save) once every rank's files are up."""
        if self.current is not None:
            raise RuntimeError(f"checkpoint {self.current.checkpoint.tag} is still uploading")
        upload = Upload(checkpoint)
        upload.thread = threading.Thread(
            target=self._run, args=(upload, local, state), name=f"checkpoint-upload-{checkpoint.tag}", daemon=True
        )
        self.current = upload
        upload.thread.start()

    def finished(self) -> bool:
        return self.current is not None and not self.current.thread.is_alive()

    def join(self) -> Upload | None:
        """Wait for the upload in flight (None: none); raise its failure, else return it. A thread
        that shows no progress (no file finished, no poll for the listings) for `timeout_s` is
        taken for hung on the store and raised as a TimeoutError."""
        upload = self.current
        if upload is None:
            return None
        # The others wait for rank 0's commit in Ray Train's barrier, which has no timeout: without
        # one here a store that hangs (an NFS mount behind file://) would hang the group silently.
        # Measured from the last progress, not the start: a large checkpoint may take longer than
        # `timeout_s` to upload. One poll interval of slack: rank 0 sleeps that long between polls.
        while upload.thread.is_alive():
            upload.thread.join(_POLL_MAX_S)
            if upload.thread.is_alive() and time.monotonic() - upload.progress > self.timeout_s + _POLL_MAX_S:
                raise TimeoutError(  # still `current`: `abandon` knows the thread may read the local copy
                    f"checkpoint {upload.checkpoint.tag}: rank {self.rank}'s upload made no progress for "
                    f"{self.timeout_s:.0f} s (train.collective_timeout_s; a hung store?); not committed"
                )
        self.current = None
        if upload.error is not None:
            raise upload.error
        return upload

    def abandon(self, wait_s: float = 0.0) -> bool:
        """The attempt failed: let a running upload end without committing anything (it stops at
        its next file or poll). Waits up to `wait_s` for the thread; True once none runs (the local
        copy is no longer read)."""
        self.stop.set()
        upload = self.current
        if upload is None:
            return True
        upload.thread.join(wait_s)
        return not upload.thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self, upload: Upload, local: Path, state: TrainerState | None) -> None:
        checkpoint = upload.checkpoint
        try:
            files = ckpt.upload_rank_files(
                self.store, self.keys, checkpoint, local / checkpoint.tag, lambda: self._after_file(upload)
            )
            if self.rank != 0:
                RankUpload(rank=self.rank, files=files).write(self.store, self.keys, checkpoint, self.attempt)
            remove_tree(local)
            if self.rank == 0:
                self.commit(checkpoint, self._everyone(upload, files), state)
                self._forget_listings(checkpoint)
        except BaseException as error:  # noqa: BLE001 - raised in the main thread by `join`
            upload.error = error
        upload.seconds = time.perf_counter() - upload.started

    def _after_file(self, upload: Upload) -> None:
        upload.progress = time.monotonic()
        checkpoint = upload.checkpoint
        if self.stop.is_set():
            raise Abandoned(f"checkpoint {checkpoint.tag}: upload abandoned")
        if self.fault is not None:
            self.fault(checkpoint.step)

    def _everyone(self, upload: Upload, own: list[CommittedFile]) -> list[CommittedFile]:
        """Rank 0: every rank's files, once each rank's listing is in the store."""
        checkpoint = upload.checkpoint
        deadline, delay = time.monotonic() + self.timeout_s, _POLL_FIRST_S
        others = set(range(1, self.world))
        while True:
            if self.stop.is_set():
                raise Abandoned(f"checkpoint {checkpoint.tag}: commit abandoned")
            written = RankUpload.written(self.store, self.keys, checkpoint, self.attempt)
            upload.progress = time.monotonic()  # alive: this wait has a deadline of its own
            missing = sorted(others - set(written))
            if not missing:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"checkpoint {checkpoint.tag}: rank(s) {missing} did not finish uploading within "
                    f"{self.timeout_s:.0f} s of rank 0 (train.collective_timeout_s); not committed"
                )
            time.sleep(delay)
            delay = min(_POLL_MAX_S, delay * 2)
        merged = {f.name: f for f in own}
        for rank in sorted(others):
            merged.update((f.name, f) for f in RankUpload.load(self.store, written[rank]).files)
        return list(merged.values())

    def _forget_listings(self, checkpoint: CheckpointId) -> None:
        """The listings served their purpose; one left behind goes with its folder in GC."""
        try:
            for key in RankUpload.written(self.store, self.keys, checkpoint, self.attempt).values():
                self.store.delete(key)
        except Exception as error:  # noqa: BLE001 - committed already: not worth failing the attempt
            log.warning("checkpoint %s: could not delete the upload listings: %s", checkpoint.tag, error)


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    path.rmdir()
