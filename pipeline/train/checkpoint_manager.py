"""Save and resume a run from its stateful parts (the model of torchtitan's `CheckpointManager`).

The manager is given the DeepSpeed engine (weights, optimizer moments and LR schedule, saved and
loaded by DeepSpeed as files) and a dict of the other stateful parts, each with `state_dict()` /
`load_state_dict()`: their dicts make `trainer_state.json` (a `TrainerState` record, the same
fields as ever). It owns the protocol of `checkpoint.py`: every rank saves and uploads its files,
rank 0 writes the trainer state, checks the run lease and writes `COMMITTED` last, then deletes
what is no longer needed; and resume discovery: rank 0 picks the newest checkpoint whose listing
is sound and whose shared files and trainer state verify (or the warm-start parent's), every rank
downloads only what it needs (verifying its partition) and loads it.

Falling back: a checkpoint that fails verification is passed over for the next older usable one,
with a warning in the worker log and the reasons in `CheckpointManager.skipped` (the first metrics
row's `resume_skipped`). When a rank's own partition fails at download, the ranks agree on it
(every rank reaches one all-gather of its outcome, failed or not) and rank 0 picks the next older
checkpoint for all of them; any other download error is raised on every rank, so none waits in a
collective for another. A warm start does not fall back (its lineage names one parent checkpoint).
New saves go to the folder of this run's lease epoch (`step-XXXXXXXX-eNNNN`, pipeline/keys.py);
the first commit of a warm-started run removes its pin on the parent's checkpoint.

Asynchronous saves (`train.async_checkpoint`, the default): the local save blocks, the upload and
rank 0's commit run in a background thread (checkpoint_upload.py) while training continues; the
loop polls it every step, and a later save (backpressure: one upload in flight, one local copy per
rank), the end of the run, a drain and the export wait for it. Synchronous saves upload and commit
before `save` returns.

Another layout: the engine loads the checkpoint's copy in DeepSpeed's universal format
(universal.py), made once per checkpoint by rank 0 before the ranks enter any torch collective
(`prepare_resume`; the others wait in Ray Train's barrier, which has no timeout), and kept
in the store next to the checkpoint (a later resume with any layout reuses it); each rank then
downloads only the part of it that it loads.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from pydantic import BaseModel

from ..keys import CheckpointId, RunKeys
from ..records import CommittedFile, TrainerState, WarmStartLineage
from ..storage import ObjectStore
from . import checkpoint as ckpt
from . import checkpoint_download as fetch
from . import checkpoint_upload as background
from . import universal as conversion
from . import warm_start
from .spec import LeaseToken
from .state import Stateful

log = logging.getLogger(__name__)

Outcome = tuple[str, str] | None  # a rank's download failure: (kind, message), kind "corrupt" or "error"
PROGRESS = "progress"  # the part whose state dict is spread over the record's top level (step, tokens)


def broadcast(value, src: int = 0):
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a worker loads: this run's own, or (`warm`) the warm-start parent's."""

    checkpoint: CheckpointId
    run: str
    warm: bool
    layout: tuple[int, int]  # (data-parallel size, pipeline stages) it was written with
    skipped: tuple[str, ...] = ()  # "<tag>: <reason>" of newer checkpoints passed over

    @property
    def step(self) -> int:
        return self.checkpoint.step


def discover(
    store: ObjectStore, keys: RunKeys, restart: bool, init_from: WarmStartLineage | None, compatibility: dict
) -> ResumePoint | None:
    """Every rank: rank 0 finds the checkpoint to resume from and broadcasts it (a `ResumeError`
    is raised on every rank, so none waits in a collective for the others)."""
    return share(_find(store, keys, restart, init_from, compatibility) if dist.get_rank() == 0 else None)


def share(found: ResumePoint | Exception | None) -> ResumePoint | None:
    """Every rank: the resume point rank 0 found, broadcast; rank 0's error is raised on every rank."""
    found = broadcast(found)
    if isinstance(found, Exception):
        raise found
    return found


def prepare_resume(
    store: ObjectStore,
    keys: RunKeys,
    restart: bool,
    init_from: WarmStartLineage | None,
    compatibility: dict,
    layout: tuple[int, int],
    node_dir: Path,
    lease: LeaseToken,
) -> tuple[ResumePoint | Exception | None, int]:
    """Rank 0, before the ranks enter any torch collective: the checkpoint to resume from (for
    `share`) and, when it was written with another layout than `layout`, its universal copy made
    (universal.py). Returns it with the bytes downloaded for the conversion.

    Why here: at 7B the conversion downloads the whole checkpoint (~100 GB), converts and uploads
    (~84 GB); inside a torch collective the other ranks would wait for it under the collective
    timeout. Here they wait in Ray Train's barrier, which has none. A checkpoint whose files fail
    verification while downloading for the conversion is passed over for the next older one (also
    converted here); any other failure is raised on every rank (a retried failure, not a refusal)."""
    fence = lambda: lease.assert_held(store, keys)  # noqa: E731
    writer = f"{keys.run} lease epoch {lease.epoch}"
    failed: dict[CheckpointId, str] = {}
    found = _find(store, keys, restart, init_from, compatibility)
    while isinstance(found, ResumePoint) and found.layout != layout:
        source, checkpoint = RunKeys(found.run), found.checkpoint
        try:
            return found, conversion.ensure_converted(store, source, checkpoint, node_dir, fence, writer)
        except ckpt.ResumeError as problem:  # a file failed verification: the next older checkpoint
            if found.warm:
                return problem, 0
            log.warning("run %r: skipping checkpoint %s: %s", keys.run, checkpoint.tag, problem)
            failed[checkpoint] = str(problem)
            found = _find(store, keys, restart, init_from, compatibility, exclude=failed)
        except Exception as problem:  # noqa: BLE001 - raised on every rank by `share`
            where = f"checkpoint {checkpoint.tag} of run {found.run!r}"
            return RuntimeError(
                f"converting {where} to universal format failed: {type(problem).__name__}: {problem}"
            ), 0
    return found, 0


def _find(
    store, keys, restart, init_from, compatibility, exclude: dict[CheckpointId, str] | None = None
) -> ResumePoint | ckpt.ResumeError | None:
    """Rank 0: the checkpoint to load, verified (shared files + trainer state); `exclude` names
    checkpoints that failed at download already."""
    try:
        checkpoint, found = ckpt.find_resume(store, keys, restart=restart, verify=True, exclude=exclude)
        skipped = tuple(found.skipped)
        for reason in skipped[len(exclude or ()) :]:
            log.warning("run %r: skipping checkpoint %s", keys.run, reason)
        if checkpoint is not None:
            state = ckpt.read_state(store, keys, checkpoint)
            ckpt.check_compatible(state.compatibility, compatibility)
            return ResumePoint(checkpoint, keys.run, False, state.layout, skipped)
        if init_from is None:
            return None
        state = warm_start.parent_state(store, init_from)
        warm_start.check_parent(state.compatibility, compatibility, init_from.run)
        parent = warm_start.parent_checkpoint(init_from)
        problem = ckpt.content_problem(store, RunKeys(init_from.run), parent)
        if problem:
            raise ckpt.ResumeError(f"train.init_from: checkpoint {parent.tag} of run {init_from.run!r}: {problem}")
    except ckpt.ResumeError as error:
        return error
    return ResumePoint(parent, init_from.run, True, state.layout)


class CheckpointManager:
    def __init__(
        self,
        store: ObjectStore,
        keys: RunKeys,
        lease: LeaseToken,
        engine: Any,  # .save(directory, tag) / .load(directory, tag, warm_start)
        states: dict[str, Stateful],
        fixed: dict[str, Any],  # the record's fields that do not change during the run
        dirs: tuple[Path, Path],  # (this rank's scratch directory, the node's download directory)
        keep_last: int,
        restart: bool = False,  # the run may start from step 0 when no checkpoint is usable
        wait_for_peers: Callable[[], None] | None = None,  # Ray Train's barrier (no timeout)
        asynchronous: bool = False,  # upload and commit in the background (checkpoint_upload.py)
        timeout_s: float = 600.0,  # asynchronous: how long rank 0 waits for the others' uploads after its own
        upload_fault: Callable[[int], None] | None = None,  # tests: called in the upload thread after each file
    ) -> None:
        self.store, self.keys, self.lease, self.engine, self.states = store, keys, lease, engine, states
        self.fixed, (self.local, self.node_dir), self.keep_last = fixed, dirs, keep_last
        self.restart, self.wait_for_peers = restart, wait_for_peers
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.skipped: list[str] = []  # checkpoints resume passed over: "<tag>: <reason>"
        self.parent: str | None = None  # warm-start parent whose pin the first commit removes
        self.saved: int | None = None  # the step saved last (committed, or uploading)
        self.pending: CheckpointId | None = None  # saved asynchronously, not yet waited for (same on every rank)
        self.upload_s: float | None = None  # the last background upload's duration, until taken
        self.uploads: background.BackgroundUploads | None = None
        if asynchronous:
            attempt = broadcast(uuid.uuid4().hex[:12] if self.rank == 0 else None)  # names this group's listings
            self.uploads = background.BackgroundUploads(
                store, keys, self.rank, self.world, attempt, self._commit, timeout_s, upload_fault
            )

    # -- save ----------------------------------------------------------------------------------
    def save(self, step: int, publish: Callable[[], None] | None = None, wait: bool = False) -> int | None:
        """All ranks save their files into this lease epoch's folder and upload them; rank 0 commits
        (fenced by the run lease), then GC and unpins a warm-start parent. Rank 0 runs `publish`
        (the metrics rows up to `step`) so that they are stored by the time the checkpoint exists.

        Synchronous: all of it before returning, `publish` just before the commit. Asynchronous: first
        wait for the previous save's upload and commit (backpressure), then save locally, `publish`,
        and return while the files go up; `wait` (the end of the run, a drain) waits for this one
        too. Returns the step of the newest checkpoint this call knows committed on every rank (to
        report to Ray Train), or None."""
        if self.uploads is None:
            self._save_now(step, publish)
            self.saved = step
            return step
        committed = self.wait()
        checkpoint = CheckpointId(step, self.lease.epoch)
        state = self.record() if self.rank == 0 else None  # the parts' state at this step, not at the commit
        rank_dir = self.local / f"save-rank{self.rank}"
        self.engine.save(str(rank_dir), checkpoint.tag)
        if self.rank == 0 and publish is not None:
            publish()
        self.uploads.start(checkpoint, rank_dir, state)
        self.pending, self.saved = checkpoint, step
        return self.wait() if wait else committed

    def poll(self) -> None:
        """Every rank, every step, without blocking: take the background upload if it finished
        (its failure is raised here, at a step boundary)."""
        if self.uploads is not None and self.uploads.finished():
            self._take()

    def wait(self) -> int | None:
        """Every rank: block until the checkpoint saved asynchronously is committed; returns its
        step (None: none was pending). A failure is raised on the rank it happened on; the others
        wait in the barrier until Ray Train ends the attempt."""
        if self.pending is None:
            return None
        self._take()
        # Rank 0 is here once it committed: past the barrier every rank knows it. Ray Train's
        # barrier has no timeout (rank 0's wait for the others' uploads has its own).
        if self.wait_for_peers is not None:
            self.wait_for_peers()
        else:
            dist.barrier()
        committed, self.pending = self.pending, None
        return committed.step

    def take_upload_seconds(self) -> float | None:
        """The duration of the background upload (rank 0: and commit) taken last, once."""
        seconds, self.upload_s = self.upload_s, None
        return seconds

    def close(self, wait_s: float = 0.0) -> bool:
        """The attempt ends: an upload still running (after a failure) commits nothing. Waits up to
        `wait_s` for it to stop; True once no upload thread reads the local copy any more."""
        return self.uploads is None or self.uploads.abandon(wait_s)

    def _take(self) -> None:
        upload = self.uploads.join()
        if upload is not None:
            self.upload_s = upload.seconds

    def _save_now(self, step: int, publish: Callable[[], None] | None) -> None:
        checkpoint = CheckpointId(step, self.lease.epoch)
        rank_dir = self.local / f"save-rank{self.rank}"
        self.engine.save(str(rank_dir), checkpoint.tag)
        files = ckpt.upload_rank_files(self.store, self.keys, checkpoint, rank_dir / checkpoint.tag)
        everyone = [None] * self.world
        dist.all_gather_object(everyone, files)
        if self.rank == 0:
            merged = {f.name: f for part in everyone for f in part}
            # Before the commit, as the asynchronous path does: a resume from this checkpoint cuts
            # the metrics at its step, so rank 0 dying between the two must not lose rows up to it.
            if publish is not None:
                publish()
            self._commit(checkpoint, list(merged.values()), self.record())
        dist.barrier()
        _remove_tree(rank_dir)

    def _commit(self, checkpoint: CheckpointId, files: list[CommittedFile], state: TrainerState) -> None:
        """Rank 0, once every rank's files are up: COMMITTED (fenced), GC, the warm-start unpin."""
        fence = lambda: self.lease.assert_held(self.store, self.keys)  # noqa: E731
        ckpt.commit(self.store, self.keys, checkpoint, files, state, self.lease.epoch, fence)
        ckpt.garbage_collect(self.store, self.keys, self.keep_last, checkpoint, fence)
        if self.parent is not None:  # the run has a checkpoint of its own now
            warm_start.unpin_parent(self.store, self.parent, self.keys.run)
            self.parent = None

    def record(self) -> TrainerState:
        """`trainer_state.json` now: the fixed fields plus every part's state dict."""
        fields = dict(self.fixed)
        for name, part in self.states.items():
            if name == PROGRESS:
                fields.update(part.state_dict())
            else:
                fields[name] = part.state_dict()
        return TrainerState(**fields)

    # -- resume --------------------------------------------------------------------------------
    def restore(self, point: ResumePoint, universal: bool, local_rank: int, dp_rank: int) -> list[int] | None:
        """Load `point` on every rank; a warm start takes the engine's weights and optimizer
        moments only (see warm_start.py). Returns the bytes each rank downloaded (None: every
        checkpoint failed verification and the run was asked to restart from step 0).

        If a rank's files fail verification, every rank learns it from one all-gather and rank 0
        picks the next older usable checkpoint (one with the layout the engine was built for)."""
        failed: dict[CheckpointId, str] = {}
        while True:
            source = RunKeys(point.run)
            downloaded, error = self._download(point, dp_rank, universal)
            if self.wait_for_peers is not None:  # a fresh node downloads its partitions: wait here,
                self.wait_for_peers()  # not in the all-gather under the collective timeout
            outcomes = [None] * self.world
            dist.all_gather_object(outcomes, error)
            errors = [(rank, e) for rank, e in enumerate(outcomes) if e is not None]
            if not errors:
                break
            detail = "; ".join(f"rank {rank}: {message}" for rank, (_, message) in errors)
            message = f"resuming from checkpoint {point.checkpoint.tag} of run {point.run!r} failed: {detail}"
            if any(kind != "corrupt" for _, (kind, _) in errors):
                # A storage hiccup, a full disk, a killed converter: the next attempt may succeed, so
                # not a refusal (ResumeError ends the job) but an error within train.max_failures.
                raise RuntimeError(message)
            if point.warm:
                raise ckpt.ResumeError(message)
            failed[point.checkpoint] = "; ".join(message for _, (_, message) in errors)
            if self.rank == 0:
                log.warning("run %r: skipping checkpoint %s: %s", point.run, point.checkpoint.tag, detail)
            found = broadcast(self._next(point, failed, universal) if self.rank == 0 else None)
            if isinstance(found, ckpt.ResumeError):
                raise found
            if found is None:
                self.skipped = [*point.skipped, *(f"{c.tag}: {r}" for c, r in failed.items())]
                return None
            point = found
        tag = conversion.local_folder(point.checkpoint) if universal else point.checkpoint.tag
        self.engine.load(str(self.node_dir), tag, warm_start=point.warm)
        if not point.warm:
            self.load_record(ckpt.read_state(self.store, source, point.checkpoint))
        self.skipped = list(point.skipped)
        self.parent = point.run if point.warm else None
        sizes = [None] * self.world
        dist.all_gather_object(sizes, downloaded)
        dist.barrier()  # every rank of the node has loaded: the node copy can go
        if local_rank == 0:
            fetch.remove_node_copy(self.node_dir)
        return sizes

    def _download(self, point: ResumePoint, dp_rank: int, universal: bool) -> tuple[int, Outcome]:
        """This rank's download of what it loads from `point`: the bytes and the outcome.

        Another layout loads the checkpoint's universal copy (universal.py), which rank 0 made
        before the ranks met (`prepare_resume`); each rank fetches its share of it. Never converted
        here, inside a collective: a fallback to an older checkpoint without a copy fails this
        attempt (every rank), and the next one converts it before the barrier."""
        source, checkpoint, node = RunKeys(point.run), point.checkpoint, self.node_dir
        if not universal:
            return _attempt(lambda: fetch.download_for_rank(self.store, source, checkpoint, node, dp_rank, False))
        fence = lambda: self.lease.assert_held(self.store, self.keys)  # noqa: E731
        # Under ZeRO-1/2 a rank reads only the parameters of its optimizer partition (None: all).
        parameters = getattr(self.engine, "universal_parameters", lambda: None)()
        return _attempt(lambda: conversion.download_for_rank(self.store, source, checkpoint, node, parameters, fence))

    def _next(
        self, point: ResumePoint, failed: dict[CheckpointId, str], universal: bool
    ) -> ResumePoint | ckpt.ResumeError | None:
        """Rank 0, after a download failed verification: the next older usable checkpoint."""
        compatibility = self.fixed.get("compatibility", {})
        found = _find(self.store, self.keys, self.restart, None, compatibility, exclude=failed)
        if isinstance(found, ResumePoint) and not universal and found.layout != point.layout:
            return ckpt.ResumeError(
                f"checkpoint {point.checkpoint.tag} of run {point.run!r} is corrupt ({failed[point.checkpoint]}) "
                f"and the next usable one, {found.checkpoint.tag}, was written with another layout "
                f"{found.layout}; launch again to resume from it"
            )
        return found

    def load_record(self, state: TrainerState) -> None:
        for name, part in self.states.items():
            if name == PROGRESS:
                part.load_state_dict({"step": state.step, "tokens": state.tokens})
            else:
                value = getattr(state, name)
                part.load_state_dict(value.model_dump() if isinstance(value, BaseModel) else value)


def _attempt(action: Callable[[], int]) -> tuple[int, Outcome]:
    """Run a download step; a failure becomes this rank's outcome (the ranks exchange outcomes, so
    none waits in a collective for a rank that raised): "corrupt" (the checkpoint failed
    verification: fall back to an older one) or "error" (raised on every rank)."""
    try:
        return action(), None
    except ckpt.ResumeError as problem:
        return 0, ("corrupt", str(problem))
    except Exception as problem:  # noqa: BLE001 - raised by restore on every rank, not just this one
        return 0, ("error", f"{type(problem).__name__}: {problem}")


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
