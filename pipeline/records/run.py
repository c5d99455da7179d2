"""Run records: the dataset pin (`run.json`), the stored run config (`config.json`), the wall
time per stage (`timings/<stage>.json`) and a training job's attempt log (`attempts/e<epoch>.json`).

`run.json` is created at a run's first launch (create-if-absent: two racing launches pin one
version) and later changed only by compare-and-swap (the warm-start lineage, `init_from`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ..keys import RunKeys
from ..storage import ObjectStore
from .base import Record


class RunFile(Record):
    """A record stored as one file in a run's folder, `runs/<run>/<file>`."""

    file: ClassVar[str]

    @classmethod
    def key(cls, run: str) -> str:
        return f"{RunKeys(run).prefix}/{cls.file}"

    @classmethod
    def load(cls, store: ObjectStore, run: str):
        """The run's record, or None when it has none."""
        try:
            return cls.from_bytes(store.read(cls.key(run)))
        except FileNotFoundError:
            return None

    def write(self, store: ObjectStore, run: str) -> None:
        store.write(self.key(run), self.to_bytes())

    @classmethod
    def delete(cls, store: ObjectStore, run: str) -> None:
        """Forget the record (before what it describes is rewritten); no record: nothing to do."""
        if store.exists(cls.key(run)):
            store.delete(cls.key(run))


class WarmStartLineage(Record):
    """The checkpoint a warm-started run began from (see pipeline/train/warm_start.py)."""

    run: str
    step: int
    dataset: str
    dataset_version: int
    checkpoint: str  # URI of the parent's checkpoint folder


class PinnedSource(Record):
    """One dataset of a mixture as pinned at a run's first launch (and recorded in its export)."""

    dataset: str
    dataset_version: int
    weight: float


class SampleOrderPin(Record):
    """What the training sample order depends on besides the data: fixed for the life of a run."""

    seed: int
    shuffle_window: int


class RunPin(Record):
    json_indent = None
    json_sort_keys = False

    dataset: str  # the (first) dataset: its tokenizer and sequence length are the run's
    dataset_version: int
    data: list[PinnedSource] | None = None  # a mixture (train.data); None: `dataset` alone
    sample_order: SampleOrderPin | None = None  # pretraining runs pinned since streaming (issue 18)
    init_from: WarmStartLineage | None = None

    @staticmethod
    def key(run: str) -> str:
        return RunKeys(run).pin

    @classmethod
    def load(cls, store: ObjectStore, run: str) -> tuple[RunPin | None, str | None]:
        """(pin, ETag), or (None, None) before the run's first launch."""
        found = store.read_with_etag(cls.key(run))
        return (cls.from_bytes(found[0]), found[1]) if found else (None, None)

    def create(self, store: ObjectStore, run: str) -> bool:
        """Create-if-absent; False when another launch pinned first."""
        return store.create(self.key(run), self.to_bytes())

    def swap(self, store: ObjectStore, run: str, etag: str | None) -> bool:
        """Compare-and-swap against `etag`; False when run.json changed meanwhile."""
        return store.swap(self.key(run), self.to_bytes(), etag) is not None

    def with_lineage(self, lineage: WarmStartLineage | None) -> RunPin:
        fields = {k: v for k, v in self.to_dict().items() if k != "init_from"}
        return RunPin(**fields, **({"init_from": lineage} if lineage else {}))


class StoredConfig(Record):
    """`config.json`: the run config of the last launch (what the report shows). Kept as the
    validated config's JSON: reading it back does not re-validate against today's schema."""

    json_sort_keys = False

    config: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:  # stored as the config itself, not wrapped
        import json

        return json.dumps(self.config, indent=self.json_indent).encode()

    def write(self, store: ObjectStore, run: str) -> None:
        store.write(RunKeys(run).config, self.to_bytes())

    @classmethod
    def load(cls, store: ObjectStore, run: str) -> StoredConfig | None:
        import json

        try:
            return cls(config=json.loads(store.read(RunKeys(run).config)))
        except FileNotFoundError:
            return None

    def section(self, name: str) -> dict[str, Any]:
        return self.config.get(name) or {}


class StageTiming(Record):
    json_indent = None
    json_sort_keys = False

    stage: str
    started: float
    finished: float
    wall_s: float

    def write(self, store: ObjectStore, run: str) -> None:
        store.write(RunKeys(run).timing(self.stage), self.to_bytes())

    @classmethod
    def load(cls, store: ObjectStore, run: str, stage: str) -> StageTiming | None:
        try:
            return cls.from_bytes(store.read(RunKeys(run).timing(stage)))
        except FileNotFoundError:
            return None


class AttemptLog(Record):
    """One training job's failure budgets as spent so far and what was decided after each failure
    (pipeline/train/retry_policy.py). Written by Ray Train's controller, one writer per lease
    epoch (the key carries it), read by the driver."""

    json_indent = None
    json_sort_keys = False

    failures: int = 0
    node_losses: int = 0
    loss_commit: int | None = None  # the newest committed step when the last loss was counted
    events: list[str] = Field(default_factory=list)

    def write(self, store: ObjectStore, run: str, epoch: int) -> None:
        store.write(RunKeys(run).attempts(epoch), self.to_bytes())

    @classmethod
    def load(cls, store: ObjectStore, run: str, epoch: int) -> AttemptLog | None:
        try:
            return cls.from_bytes(store.read(RunKeys(run).attempts(epoch)))
        except FileNotFoundError:
            return None
