"""Dataset records: the manifest of a version (`manifests/vNNNNNN.json`) and the `LATEST` pointer.

A version becomes visible only when `LATEST` moves (compare-and-swap from the parent's ETag), and
only after every shard and the manifest itself exist (create-if-absent); a crash at any earlier
point leaves readers on the previous version. Manifest files that never became LATEST (a crashed
publisher) are ignored by readers and skipped over when numbering the next version.

Schema 2 (what this code writes) keeps what grows with the corpus or the chain out of the JSON
that every reader parses: the version's source files are one Arrow file the manifest names
(`source_index`, see `source_index.py`), and the versions LATEST has pointed at are ranges in the
manifest itself (`published`), so deciding whether a version was published reads LATEST's
manifest, not one manifest per version. Schema 1 manifests (JSON `sources`, no `published`) stay
readable: a refresh diffs against their `sources`, and the chain is walked once to seed
`published` when one of them is a new version's parent.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from ..errors import UserError
from ..faults import fail_point
from ..keys import DatasetKeys
from ..storage import ObjectStore
from .base import Record

SCHEMA_VERSION = 2  # 1: sources as JSON, no `published` (still read)
SPLITS = ("train", "val", "heldout")


class ShardEntry(Record):
    uri: str
    key: str
    rows: int
    tokens: int
    bytes: int
    sha256: str
    docs: int | None = None


class TokenizerInfo(Record):
    uri: str
    key: str
    sha256: str
    vocab_size: int
    eos_id: int
    pad_id: int


class SourceEntry(Record):
    """One source file as it was when the version was built (what a refresh diffs against)."""

    uri: str
    size: int
    version: Any  # ETag or mtime: whatever the source's filesystem reports
    source_index: int


class BuildStats(Record):
    """Counts of one build (`stats.run`) or of every build of the version chain (`stats.total`)."""

    docs_read: int = 0
    docs_kept: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)
    duplicates: dict[str, int] = Field(default_factory=dict)
    tokens: dict[str, int] = Field(default_factory=dict)
    blocks: dict[str, int] = Field(default_factory=dict)
    source_bytes: int = 0
    # The filter chain's counters, `<filter>/<counter>`: documents each filter checked
    # (`<filter>/checked`) and what it did besides dropping (e.g. `pii/email` redactions);
    # its drops are in `rejected` as `<filter>/<reason>`.
    filters: dict[str, int] = Field(default_factory=dict)

    def plus(self, other: BuildStats) -> BuildStats:
        """Field-wise sum (dict fields key by key), for the version chain's totals."""
        mine, theirs = self.model_dump(), other.model_dump()
        summed = {}
        for name, value in theirs.items():
            if isinstance(value, dict):
                summed[name] = {k: mine[name].get(k, 0) + value.get(k, 0) for k in sorted(set(mine[name]) | set(value))}
            else:
                summed[name] = mine[name] + value
        return BuildStats(**summed)


class ManifestStats(Record):
    run: BuildStats
    total: BuildStats


class DatasetVersion(Record):
    """A published version as training, fine-tuning, evaluation and the report read it: shards,
    tokenizer, shape, stats and lineage. The per-file source list and the dedup index (what only a
    refresh needs, and what grows with the corpus's file count) are skipped while parsing: 0.1 s
    and a few MB where the whole `Manifest` of 256k source files costs 1.6 s and 300 MB. A view,
    never published."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    version: int
    parent_version: int | None = None
    created_at: str | None = None
    dataset: str
    seq_len: int
    dtype: Literal["uint16", "uint32"]  # token dtype of the shards
    tokenizer: TokenizerInfo
    shards: dict[str, list[ShardEntry]]
    stats: ManifestStats | None = None
    config_sha256: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)  # the data config it was built with
    run_id: str | None = None

    @property
    def block_len(self) -> int:
        """Tokens per stored row: inputs are `[:-1]`, labels `[1:]`."""
        return self.seq_len + 1

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def split(self, name: str) -> tuple[ShardEntry, ...]:
        return tuple(self.shards.get(name, ()))

    @property
    def key(self) -> str:
        return DatasetKeys(self.dataset).manifest(self.version)

    @property
    def heldout_fraction(self) -> float | None:
        return (self.config.get("split") or {}).get("heldout_fraction")


class Manifest(DatasetVersion):
    """One published dataset version, whole (DESIGN.md s.3): what the data stage writes and a
    refresh diffs against. Fields a newer writer added are kept (`extra="allow"`)."""

    model_config = ConfigDict(extra="allow")

    sources: list[SourceEntry] = Field(default_factory=list)  # schema 1 only; then `source_index`
    source_index: str | None = None  # key of the version's source index (Arrow IPC), schema 2 on
    published: list[tuple[int, int]] | None = None  # see ManifestHeader
    dedup_index: list[str] = Field(default_factory=list)
    dedup_scheme: str | None = None  # absent in manifests written before schemes were recorded
    runs: list[str] = Field(default_factory=list)


class ManifestHeader(Record):
    """The chain fields of a manifest, parsed without building its source and shard lists."""

    model_config = ConfigDict(extra="ignore")

    version: int
    parent_version: int | None = None
    # Every version LATEST has pointed at up to this one (itself included) as ascending inclusive
    # [first, last] ranges: gaps are versions a crashed or overtaken writer left behind. Absent in
    # schema 1 manifests (their chain is walked).
    published: list[tuple[int, int]] | None = None


class LatestPointer(Record):
    json_indent = None
    json_sort_keys = False

    version: int
    manifest: str  # the manifest's key


def _latest(store: ObjectStore, name: str) -> tuple[str, str] | None:
    """(key of the newest published manifest, LATEST's ETag), or None before the first publish."""
    pointer = store.read_with_etag(DatasetKeys(name).latest)
    return (LatestPointer.from_bytes(pointer[0]).manifest, pointer[1]) if pointer else None


def read_latest(store: ObjectStore, name: str) -> tuple[Manifest | None, str | None]:
    """(manifest, LATEST's ETag) of the newest published version, or (None, None)."""
    latest = _latest(store, name)
    return (Manifest.from_bytes(store.read(latest[0])), latest[1]) if latest else (None, None)


def read_dataset(store: ObjectStore, name: str, version: int | str | None = "LATEST") -> DatasetVersion:
    """A published version by number, or the latest, as readers of the dataset need it (no source
    list); `UserError` if there is none."""
    return read_version(store, name, version, DatasetVersion)


def read_version(
    store: ObjectStore, name: str, version: int | str | None = "LATEST", record: type[DatasetVersion] = Manifest
) -> Manifest:
    """A published manifest by number, or the latest; `UserError` if there is none."""
    if version in ("LATEST", None):
        latest = _latest(store, name)
        if latest is None:
            raise UserError(f"dataset {name!r} has no published version under {store.root_uri}")
        return record.from_bytes(store.read(latest[0]))
    key = DatasetKeys(name).manifest(int(version))
    try:
        manifest = record.from_bytes(store.read(key))
    except FileNotFoundError:
        raise UserError(f"dataset {name!r} has no version {version} ({store.uri(key)})") from None
    if not is_published(store, name, int(version)):
        raise UserError(
            f"dataset {name!r} version {version} was never published (LATEST never pointed at it: "
            "a crashed or overtaken writer left it behind)"
        )
    return manifest


def published_versions(store: ObjectStore, name: str) -> list[int]:
    """Versions LATEST has pointed at, newest first."""
    return [v for first, last in reversed(published_ranges(store, name)) for v in range(last, first - 1, -1)]


def published_ranges(store: ObjectStore, name: str) -> list[tuple[int, int]]:
    """Versions LATEST has pointed at, as ascending [first, last] ranges: from LATEST's manifest
    alone (one read) when it records them, else by walking its parent chain (schema 1)."""
    latest = _latest(store, name)
    return _chain(store, name, ManifestHeader.from_bytes(store.read(latest[0]))) if latest else []


def is_published(store: ObjectStore, name: str, version: int) -> bool:
    """Whether LATEST ever pointed at `version` (a manifest that never did is a crashed or
    overtaken writer's: readers must not use it)."""
    pointer = store.read_with_etag(DatasetKeys(name).latest)
    if pointer is None:
        return False
    latest = LatestPointer.from_bytes(pointer[0])
    if latest.version == version:
        return True
    ranges = _chain(store, name, ManifestHeader.from_bytes(store.read(latest.manifest)))
    return any(first <= version <= last for first, last in ranges)


def published_chain(store: ObjectStore, name: str, parent: Manifest | None, version: int) -> list[tuple[int, int]]:
    """The `published` ranges of a new version `version` whose parent (LATEST now) is `parent`."""
    if parent is None:
        return [(version, version)]
    header = ManifestHeader(version=parent.version, parent_version=parent.parent_version, published=parent.published)
    before = _chain(store, name, header)
    return as_ranges([v for first, last in before for v in range(first, last + 1)] + [version])


def _chain(store: ObjectStore, name: str, header: ManifestHeader) -> list[tuple[int, int]]:
    """Ranges of the versions of `header`'s chain, itself included: its own `published` when it
    has it, else the parent chain walked back to a manifest that has it (or to the first)."""
    versions: list[int] = []
    while header.published is None:
        versions.append(header.version)
        if not header.parent_version:
            return as_ranges(versions)
        header = ManifestHeader.from_bytes(store.read(DatasetKeys(name).manifest(header.parent_version)))
    return as_ranges(versions + [v for first, last in header.published for v in range(first, last + 1)])


def as_ranges(versions: list[int]) -> list[tuple[int, int]]:
    """Ascending inclusive [first, last] runs of `versions`: [1, 2, 3, 5] -> [(1, 3), (5, 5)]."""
    ranges: list[tuple[int, int]] = []
    for v in sorted(set(versions)):
        if ranges and ranges[-1][1] == v - 1:
            ranges[-1] = (ranges[-1][0], v)
        else:
            ranges.append((v, v))
    return ranges


def next_version(store: ObjectStore, name: str) -> int:
    keys = store.list(DatasetKeys(name).manifests)
    numbers = [int(k.rpartition("/v")[2].removesuffix(".json")) for k in keys if k.endswith(".json")]
    return max(numbers, default=0) + 1


def publish(store: ObjectStore, manifest: Manifest, latest_etag: str | None, lease) -> str:
    """Write the manifest (create-if-absent), then move LATEST (compare-and-swap). Returns its key.

    `lease` is the writer's `Lease` or `Heartbeat`: checked between the two writes (fencing).
    """
    keys = DatasetKeys(manifest.dataset)
    if not store.create(manifest.key, manifest.to_bytes()):
        raise UserError(
            f"{store.uri(manifest.key)} already exists: another writer published version {manifest.version}"
        )
    fail_point("before_latest")
    lease.assert_held()
    pointer = LatestPointer(version=manifest.version, manifest=manifest.key)
    if store.swap(keys.latest, pointer.to_bytes(), latest_etag) is None:
        raise UserError(f"{store.uri(keys.latest)} moved while this run was working; not published")
    return manifest.key
