"""Checkpoint records: `trainer_state.json` (where training stands) and `COMMITTED` (the listing
that makes a checkpoint exist: every file with size and sha256, and the lease epoch it was
written under). Both are plain writes: the checkpoint protocol (pipeline/train/checkpoint.py)
fences `COMMITTED` with the run lease and writes it last.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ..keys import RunKeys, safe_relative
from ..storage import ObjectStore
from .base import Record

COMMITTED = "COMMITTED"
STATE = "trainer_state.json"


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

    def write(self, store: ObjectStore, keys: RunKeys) -> None:
        store.write(keys.checkpoint_file(self.step, COMMITTED), self.to_bytes())

    @classmethod
    def load(cls, store: ObjectStore, keys: RunKeys, step: int) -> Committed:
        return cls.from_bytes(store.read(keys.checkpoint_file(step, COMMITTED)))


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
    def load(cls, store: ObjectStore, keys: RunKeys, step: int) -> TrainerState:
        return cls.from_bytes(store.read(keys.checkpoint_file(step, STATE)))
