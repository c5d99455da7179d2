"""Save and resume a run from its stateful parts (the model of torchtitan's `CheckpointManager`).

The manager is given the DeepSpeed engine (weights, optimizer moments and LR schedule, saved and
loaded by DeepSpeed as files) and a dict of the other stateful parts, each with `state_dict()` /
`load_state_dict()`: their dicts make `trainer_state.json` (a `TrainerState` record, the same
fields as ever). It owns the protocol of `checkpoint.py`: every rank saves and uploads its files,
rank 0 writes the trainer state, checks the run lease and writes `COMMITTED` last, then deletes
what is no longer needed; and resume discovery: rank 0 picks the newest sound checkpoint (or the
warm-start parent's), every rank downloads only what it needs and loads it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from pydantic import BaseModel

from ..keys import RunKeys
from ..records import TrainerState, WarmStartLineage
from ..storage import ObjectStore
from . import checkpoint as ckpt
from . import warm_start
from .spec import LeaseToken
from .state import Stateful

PROGRESS = "progress"  # the part whose state dict is spread over the record's top level (step, tokens)


def broadcast(value, src: int = 0):
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a worker loads: this run's own, or (`warm`) the warm-start parent's."""

    step: int
    run: str
    warm: bool
    layout: tuple[int, int]  # (data-parallel size, pipeline stages) it was written with


def discover(
    store: ObjectStore, keys: RunKeys, restart: bool, init_from: WarmStartLineage | None, compatibility: dict
) -> ResumePoint | None:
    """Every rank: rank 0 finds the checkpoint to resume from and broadcasts it (a `ResumeError`
    is raised on every rank, so none waits in a collective for the others)."""
    found = broadcast(_find(store, keys, restart, init_from, compatibility) if dist.get_rank() == 0 else None)
    if isinstance(found, ckpt.ResumeError):
        raise found
    return found


def _find(store, keys, restart, init_from, compatibility) -> ResumePoint | ckpt.ResumeError | None:
    try:
        step, _ = ckpt.find_resume(store, keys, restart=restart)
        if step is not None:
            state = ckpt.read_state(store, keys, step)
            ckpt.check_compatible(state.compatibility, compatibility)
            return ResumePoint(step, keys.run, False, state.layout)
        if init_from is None:
            return None
        state = warm_start.parent_state(store, init_from)
        warm_start.check_parent(state.compatibility, compatibility, init_from.run)
    except ckpt.ResumeError as error:
        return error
    return ResumePoint(init_from.step, init_from.run, True, state.layout)


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
    ) -> None:
        self.store, self.keys, self.lease, self.engine, self.states = store, keys, lease, engine, states
        self.fixed, (self.local, self.node_dir), self.keep_last = fixed, dirs, keep_last
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    # -- save ----------------------------------------------------------------------------------
    def save(self, step: int, after_commit: Callable[[], None] | None = None) -> None:
        """All ranks save + upload their files; rank 0 commits (fenced by the run lease), then GC
        and `after_commit`."""
        tag = ckpt.tag_for(step)
        rank_dir = self.local / f"save-rank{self.rank}"
        self.engine.save(str(rank_dir), tag)
        files = ckpt.upload_rank_files(self.store, self.keys, step, rank_dir / tag)
        everyone = [None] * self.world
        dist.all_gather_object(everyone, files)
        if self.rank == 0:
            merged = {f.name: f for part in everyone for f in part}
            fence = lambda: self.lease.assert_held(self.store, self.keys)  # noqa: E731
            ckpt.commit(self.store, self.keys, step, list(merged.values()), self.record(), self.lease.epoch, fence)
            ckpt.garbage_collect(self.store, self.keys, self.keep_last, step, fence)
            if after_commit is not None:
                after_commit()
        dist.barrier()
        _remove_tree(rank_dir)

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
    def restore(self, point: ResumePoint, universal: bool, local_rank: int, dp_rank: int) -> list[int]:
        """Load `point` on every rank; a warm start takes the engine's weights and optimizer
        moments only (see warm_start.py). Returns the bytes each rank downloaded."""
        source, tag = RunKeys(point.run), ckpt.tag_for(point.step)
        downloaded = ckpt.download_for_rank(
            self.store, source, point.step, self.node_dir, dp_rank, everything=universal
        )
        if universal:
            with ckpt.node_lock(self.node_dir / f"{tag}.convert.lock"):
                tag = _to_universal(self.node_dir, tag)
        self.engine.load(str(self.node_dir), tag, warm_start=point.warm)
        if not point.warm:
            self.load_record(ckpt.read_state(self.store, source, point.step))
        sizes = [None] * self.world
        dist.all_gather_object(sizes, downloaded)
        dist.barrier()  # every rank of the node has loaded: the node copy can go
        if local_rank == 0:
            ckpt.remove_node_copy(self.node_dir)
        return sizes

    def load_record(self, state: TrainerState) -> None:
        for name, part in self.states.items():
            if name == PROGRESS:
                part.load_state_dict({"step": state.step, "tokens": state.tokens})
            else:
                value = getattr(state, name)
                part.load_state_dict(value.model_dump() if isinstance(value, BaseModel) else value)


def _to_universal(local: Path, tag: str) -> str:
    """Convert a downloaded checkpoint to DeepSpeed's universal format (once per node); returns the new tag."""
    target = local / f"{tag}-universal"
    if not target.exists():
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(local / tag)]
        command += ["--output_folder", str(target), "--num_extract_workers", "1", "--num_merge_workers", "1"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"converting checkpoint {tag} to universal format failed:\n{done.stderr[-2000:]}")
    return target.name


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
