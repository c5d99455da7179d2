"""What one build of the data stage carries from phase to phase (`phases.py`).

The stage fills in the inputs (config, store, the lease, the units, the parent manifest, the given
tokenizer); each phase reads what earlier phases left and adds its own outputs. Work a phase starts
without waiting for it (the LSH layout thread, the rejects and dedup-index writers) is kept here as
a future or a Ray reference and collected by the phase that needs its result.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..keys import DatasetKeys
from .exchange import Scratch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from ..config.data import DataConfig
    from ..config.run import RunConfig
    from ..records import Manifest, ShardEntry, TokenizerInfo
    from ..storage import ObjectStore, StorageSettings
    from ..storage.heartbeat import Heartbeat
    from .blocks import Blocks
    from .dedup_stage import DedupStats
    from .eval_tasks import EvalTask
    from .read_stage import ReadStats, RecordBlocks
    from .sources import SourceUnit
    from .summary import Reporter


@dataclass
class BuildState:
    # Inputs, set by the stage.
    config: RunConfig
    store: ObjectStore
    settings: StorageSettings
    lease: Heartbeat  # checked between the manifest write and the LATEST swap
    run_id: str
    config_sha256: str
    units: list[SourceUnit]  # every source file as it is now: the new manifest's sources
    new_units: list[SourceUnit]  # new or changed since the parent: what this run reads
    parent: Manifest | None  # the version LATEST points at, or None for a first build
    parent_etag: str | None
    given: tuple[Tokenizer, int, int] | None  # a configured tokenizer with its EOS and PAD ids
    reporter: Reporter
    cpus: int

    # read
    eval_tasks: list[EvalTask] | None = None  # decontamination's task files, checked before reading
    layout: Future | None = None  # the LSH band layout, computed by a thread during the reads
    records: RecordBlocks | None = None
    read_stats: ReadStats | None = None
    # dedup, decontaminate
    removed: Blocks | None = None  # per record block, its removed (and flagged) documents
    dedup_stats: DedupStats | None = None
    kept: Blocks | None = None  # the kept records, cut for tokenizing
    # tokenizer
    split_bytes: dict[str, int] = field(default_factory=dict)
    writers: Future | None = None  # the rejects' row counts and the dedup index's keys, being written
    tokenizer: Tokenizer | None = None
    tokenizer_info: TokenizerInfo | None = None
    # tokenize + pack
    shards: dict[str, list[ShardEntry]] = field(default_factory=dict)  # this run's, by split
    index_keys: list[str] = field(default_factory=list)
    # publish
    manifest: Manifest | None = None

    @property
    def data(self) -> DataConfig:
        return self.config.data

    @property
    def prefix(self) -> str:
        return DatasetKeys(self.data.name).prefix

    @property
    def rejects_prefix(self) -> str:
        return DatasetKeys(self.data.name).rejects(self.run_id)

    @property
    def scratch(self) -> Scratch:
        """Where this build's blocks and exchanges are written (`blocks.py`, `exchange.py`)."""
        return Scratch(self.store.root_uri, self.settings, f"{DatasetKeys(self.data.name).scratch}/{self.run_id}")

    @property
    def docs_kept(self) -> int:
        """Live documents (decontamination's drops are rejects: no longer live) less duplicates."""
        return self.read_stats.live - self.dedup_stats.removed
