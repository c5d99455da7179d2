"""Checkpoint records: `trainer_state.json` (where training stands) and `COMMITTED` (the listing
that makes a checkpoint exist: every file with size and sha256, and the lease epoch it was
written under). Both are plain writes: the checkpoint protocol (pipeline/train/checkpoint.py)
fences `COMMITTED` with the run lease and writes it last. `RankUpload` (`<checkpoint>/_uploads/
<attempt>/rank-NNNNN.json`) is one rank's listing of the files it uploaded in the background
(asynchronous checkpoints): rank 0 commits once every rank's is there. `WarmStartPin` (`runs/<parent>/pins/
<child>.json`) keeps a parent's checkpoint out of garbage collection while a child warm-starts
from it.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..keys import CheckpointId, RunKeys, as_checkpoint, safe_relative
from ..storage import ObjectStore
from .base import Record

COMMITTED = "COMMITTED"
CONVERTED = "CONVERTED"
STATE = "trainer_state.json"
UPLOADS = "_uploads"  # the subfolder of a checkpoint with its ranks' upload listings (not in COMMITTED)
_RANK_LISTING = re.compile(r"rank-(\d+)\.json")


class CommittedFile(Record):
    name: str
    size: int
    sha256: str

    @field_validator("name")
    @classmethod
    def _safe(cls, name: str) -> str:
        return safe_relative(name)  # a listed name never points above the checkpoint folder


class Committed(Record):
    json_sort_keys = False

    step: int
    lease_epoch: int | None = None
    files: list[CommittedFile]

    def write(self, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> None:
        store.write(keys.checkpoint_file(checkpoint, COMMITTED), self.to_bytes())

    @classmethod
    def load(cls, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> Committed:
        return cls.from_bytes(store.read(keys.checkpoint_file(checkpoint, COMMITTED)))


class RankUpload(Record):
    """One rank's files of a checkpoint, all up in the store: written by the rank's upload thread
    when its last file is up, read by rank 0's, which commits once every rank of the attempt has
    written one. `attempt` (a token of the worker group, one per start) keeps a listing left by a
    killed attempt, whose files the next attempt overwrites, from being taken for the new one's."""

    json_indent: ClassVar[int | None] = None

    rank: int
    files: list[CommittedFile]

    @staticmethod
    def folder(keys: RunKeys, checkpoint: int | CheckpointId, attempt: str) -> str:
        return keys.checkpoint_file(checkpoint, f"{UPLOADS}/{attempt}")

    def write(self, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId, attempt: str) -> None:
        store.write(f"{self.folder(keys, checkpoint, attempt)}/rank-{self.rank:05d}.json", self.to_bytes())

    @classmethod
    def written(cls, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId, attempt: str) -> dict[int, str]:
        """{rank: key} of the listings written so far (each read with `load`; a local store's
        temporary file of a write in progress is no listing)."""
        found = {}
        for key in store.list(cls.folder(keys, checkpoint, attempt)):
            match = _RANK_LISTING.fullmatch(key.rsplit("/", 1)[-1])
            if match:
                found[int(match.group(1))] = key
        return found

    @classmethod
    def load(cls, store: ObjectStore, key: str) -> RankUpload:
        return cls.from_bytes(store.read(key))


class Converted(Record):
    """The universal-format copy of one checkpoint is complete: its files (names relative to the
    copy's folder), written by `writer` (run and lease epoch) with DeepSpeed `deepspeed`."""

    json_sort_keys = False

    source: str  # the checkpoint folder it was converted from, e.g. step-00000100-e0003
    writer: str  # "<run> lease epoch <n>": who converted it (a warm-starting child converts its parent's)
    deepspeed: str
    seconds: float  # how long the conversion took (the cost a later resume saves)
    files: list[CommittedFile]

    def write(self, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> None:
        store.write(keys.universal_file(checkpoint, CONVERTED), self.to_bytes())

    @classmethod
    def load(cls, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> Converted | None:
        """The marker, or None when there is none (never converted, or killed before it finished)."""
        try:
            return cls.from_bytes(store.read(keys.universal_file(checkpoint, CONVERTED)))
        except FileNotFoundError:
            return None

    @staticmethod
    def delete(store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> None:
        key = keys.universal_file(checkpoint, CONVERTED)
        if store.exists(key):
            store.delete(key)


class EarlyStoppingState(Record):
    best_val: float | None = None
    evals_since_best: int = 0
    stopped: bool = False


class TrainerState(Record):
    step: int
    loader: dict[str, Any]  # the loader's state_dict (one integer today)
    dp_size: int
    pp: int
    world_size: int
    rng: dict[str, str] = Field(default_factory=dict)
    tokens: int = 0
    dataset: str
    dataset_version: int
    compatibility: dict[str, Any] = Field(default_factory=dict)
    early_stopping: EarlyStoppingState = Field(default_factory=EarlyStoppingState)
    config: dict[str, Any] = Field(default_factory=dict)

    @property
    def layout(self) -> tuple[int, int]:
        """(data-parallel size, pipeline stages) it was written with."""
        return self.dp_size, self.pp

    @property
    def bf16(self) -> bool | None:
        """The precision it was written with (None: not recorded)."""
        return self.compatibility.get("bf16")

    @classmethod
    def load(cls, store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> TrainerState:
        return cls.from_bytes(store.read(keys.checkpoint_file(checkpoint, STATE)))


class WarmStartPin(Record):
    """`runs/<parent>/pins/<child>.json`: run `child` is warm-starting from the parent's checkpoint
    `tag`; the parent's garbage collection leaves that checkpoint alone until the pin is removed
    (the child committed its own first checkpoint, or its launch ended) or `expires_at` passed (a
    child driver that died does not pin forever)."""

    child: str
    tag: str  # the parent's checkpoint folder, e.g. step-00000100-e0003
    created_at: float
    expires_at: float

    @property
    def checkpoint(self) -> CheckpointId | None:
        return CheckpointId.parse(self.tag)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at < (time.time() if now is None else now)

    @classmethod
    def for_child(cls, child: str, checkpoint: int | CheckpointId, ttl_s: float) -> WarmStartPin:
        now = time.time()
        return cls(child=child, tag=as_checkpoint(checkpoint).tag, created_at=now, expires_at=now + ttl_s)

    def write(self, store: ObjectStore, parent: str) -> None:
        store.write(RunKeys(parent).warm_start_pin(self.child), self.to_bytes())

    @staticmethod
    def delete(store: ObjectStore, parent: str, child: str) -> None:
        key = RunKeys(parent).warm_start_pin(child)
        if store.exists(key):
            store.delete(key)

    @classmethod
    def load_all(cls, store: ObjectStore, parent: str) -> list[WarmStartPin]:
        """Every readable pin on `parent` (an unreadable one names no checkpoint and is skipped)."""
        pins = []
        for key in store.list(RunKeys(parent).warm_start_pins):
            try:
                pins.append(cls.from_bytes(store.read(key)))
            except (FileNotFoundError, ValueError):  # removed meanwhile, or not a pin
                continue
        return pins
