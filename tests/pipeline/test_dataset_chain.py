"""Dataset version records without the data stage (no Ray, milliseconds): the source index (one
Arrow file per version, what a refresh diffs) and the published chain (`read_version` decides
from LATEST's manifest alone whether a version was published), across schema 1 manifests (JSON
`sources`, no `published`) and schema 2 ones."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pytest

from pipeline.errors import UserError
from pipeline.keys import DatasetKeys
from pipeline.records import (
    LatestPointer,
    Manifest,
    SourceEntry,
    is_published,
    publish,
    published_chain,
    published_versions,
    read_source_index,
    read_version,
    source_entries,
    unindexed,
    write_source_index,
)
from pipeline.records.dataset import SCHEMA_VERSION, as_ranges
from pipeline.records.source_index import SCHEMA
from pipeline.storage import open_store

NAME = "chain"
TOKENIZER = {"uri": "u", "key": "k", "sha256": "0" * 64, "vocab_size": 300, "eos_id": 0, "pad_id": 1}


@dataclass(frozen=True)
class Unit:
    """What the index needs of a source unit (pipeline/data/sources.py `SourceUnit`)."""

    uri: str
    size: int
    version: str
    source_index: int = 0


class HeldLease:
    def assert_held(self) -> None:
        pass


class CountingReads:
    """Counts the store's reads (`read`, `read_with_etag`) by key."""

    def __init__(self, store, monkeypatch):
        self.keys: list[str] = []
        for method in ("read", "read_with_etag"):
            original = getattr(store, method)
            monkeypatch.setattr(store, method, self._counted(original))

    def _counted(self, original):
        def read(key, *args, **kwargs):
            self.keys.append(key)
            return original(key, *args, **kwargs)

        return read

    def take(self) -> list[str]:
        keys, self.keys = self.keys, []
        return keys


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/root")


def _manifest(store, version: int, parent: Manifest | None, units: list[Unit]) -> Manifest:
    """A schema 2 manifest as `phases.publish` builds it: index first, `published` from the parent."""
    index = write_source_index(store, NAME, version, f"run{version}", units)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        version=version,
        parent_version=parent.version if parent else None,
        dataset=NAME,
        seq_len=8,
        dtype="uint16",
        tokenizer=TOKENIZER,
        shards={"train": [], "val": []},
        source_index=index,
        published=published_chain(store, NAME, parent, version),
    )


def _publish(store, manifest: Manifest) -> Manifest:
    etag = store.read_with_etag(DatasetKeys(NAME).latest)
    publish(store, manifest, etag[1] if etag else None, HeldLease())
    return manifest


def _publish_schema1(store, version: int, parent: int | None, units: list[Unit], latest: bool = True) -> None:
    """A manifest as written before the source index: JSON `sources`, no `published` (`latest`
    False: a crashed writer's, never LATEST)."""
    body = {
        "schema_version": 1,
        "version": version,
        "parent_version": parent,
        "dataset": NAME,
        "seq_len": 8,
        "dtype": "uint16",
        "tokenizer": TOKENIZER,
        "shards": {"train": [], "val": []},
        "sources": [{"uri": u.uri, "size": u.size, "version": u.version, "source_index": 0} for u in units],
    }
    keys = DatasetKeys(NAME)
    assert store.create(keys.manifest(version), json.dumps(body).encode())
    if not latest:
        return
    etag = store.read_with_etag(keys.latest)
    pointer = LatestPointer(version=version, manifest=keys.manifest(version))
    assert store.swap(keys.latest, pointer.to_bytes(), etag[1] if etag else None)


def _orphan(store, manifest: Manifest) -> None:
    """A crashed writer's manifest: written, never made LATEST."""
    assert store.create(manifest.key, manifest.to_bytes())


def test_source_index_is_one_sorted_compressed_arrow_file_and_not_in_the_manifest(store):
    units = [Unit(f"file:///c/f{i:04d}.jsonl", 100 + i, f"{i}", i % 2) for i in reversed(range(500))]
    manifest = _publish(store, _manifest(store, 1, None, units))
    body = json.loads(store.read(manifest.key))
    assert "sources" not in body and body["source_index"] == manifest.source_index
    assert body["published"] == [[1, 1]] and body["schema_version"] == 2
    assert manifest.source_index.startswith("datasets/chain/sources/v000001-run1")

    raw = store.read(manifest.source_index)
    reader = pa.ipc.open_file(pa.BufferReader(raw))
    assert reader.schema.equals(SCHEMA) and len(raw) < 500 * 30  # compressed, far below JSON's ~80 B/file
    table = read_source_index(store, Manifest.from_bytes(store.read(manifest.key)))
    assert table["uri"].to_pylist() == sorted(u.uri for u in units)
    entries = source_entries(store, manifest)
    assert entries[0] == SourceEntry(uri="file:///c/f0000.jsonl", size=100, version="0", source_index=0)
    assert len(entries) == 500
    with pytest.raises(UserError, match="already exists"):
        write_source_index(store, NAME, 1, "run1", units)


def test_diff_against_an_index_is_exact_for_new_changed_and_unchanged_files(store):
    old = [Unit("file:///a", 1, "m1"), Unit("file:///b", 2, "m2"), Unit("file:///c", 3, "m3"), Unit("file:///d", 4, "")]
    index = read_source_index(store, _manifest(store, 1, None, old))
    now = [
        Unit("file:///e", 5, "m5"),  # new
        Unit("file:///a", 1, "m1"),  # unchanged
        Unit("file:///b", 9, "m2"),  # size changed
        Unit("file:///c", 3, "m9"),  # version (mtime, ETag) changed
        Unit("file:///d", 4, ""),  # unchanged, empty version
        Unit("file:///a", 1, "m1", 1),  # the same file in a second source: known
    ]  # file:///... d removed: nothing to read
    assert unindexed(now, index) == [now[0], now[2], now[3]]
    assert unindexed(now, None) == now and unindexed([], index) == []


def test_a_schema1_manifest_lists_its_sources_as_json_and_still_diffs(store):
    units = [Unit("file:///a", 1, "m1"), Unit("file:///b", 2, "m2")]
    _publish_schema1(store, 1, None, units)
    parent = read_version(store, NAME)
    assert parent.source_index is None and parent.published is None
    assert [e.uri for e in source_entries(store, parent)] == ["file:///a", "file:///b"]
    assert unindexed([Unit("file:///a", 1, "m1"), Unit("file:///b", 2, "m3")], read_source_index(store, parent)) == [
        Unit("file:///b", 2, "m3")
    ]


def test_read_version_decides_from_latest_alone_whatever_the_chain_length(store, monkeypatch):
    reads = CountingReads(store, monkeypatch)
    units = [Unit("file:///a", 1, "m1")]
    counts = {}
    parent = None
    for version in range(1, 41):
        manifest = _manifest(store, version, parent, units)
        if version in (7, 23):  # crashed writers: their numbers are skipped
            _orphan(store, manifest)
            continue
        parent = _publish(store, manifest)
        if version in (2, 10, 40):
            reads.take()
            assert read_version(store, NAME, 1).version == 1
            counts[version] = len(reads.take())
    assert counts == {2: 3, 10: 3, 40: 3}  # manifest 1, LATEST, LATEST's manifest
    assert parent.published == [(1, 6), (8, 22), (24, 40)]
    reads.take()
    assert read_version(store, NAME, 40).version == 40 and len(reads.take()) == 2  # LATEST itself: no header
    for orphan in (7, 23):
        with pytest.raises(UserError, match=f"version {orphan} was never published"):
            read_version(store, NAME, orphan)
    with pytest.raises(UserError, match="has no version 41"):
        read_version(store, NAME, 41)
    reads.take()
    assert published_versions(store, NAME) == [v for v in range(40, 0, -1) if v not in (7, 23)]
    assert len(reads.take()) == 2


def test_a_chain_of_schema1_manifests_is_walked_once_then_recorded(store, monkeypatch):
    units = [Unit("file:///a", 1, "m1")]
    _publish_schema1(store, 1, None, units)
    _publish_schema1(store, 2, 1, units)
    _publish_schema1(store, 3, 2, units, latest=False)
    _publish_schema1(store, 4, 2, units)
    reads = CountingReads(store, monkeypatch)
    # Old chain only: the walk still answers (one header per version).
    assert published_versions(store, NAME) == [4, 2, 1]
    assert is_published(store, NAME, 2) and not is_published(store, NAME, 3)
    with pytest.raises(UserError, match="version 3 was never published"):
        read_version(store, NAME, 3)

    parent = read_version(store, NAME)
    reads.take()
    v5 = _publish(store, _manifest(store, 5, parent, units))  # seeds `published` from the walk
    assert v5.published == [(1, 2), (4, 5)]
    assert {k for k in reads.take() if k.endswith(".json")} == {DatasetKeys(NAME).manifest(v) for v in (2, 1)}
    v6 = _publish(store, _manifest(store, 6, v5, units))
    assert v6.published == [(1, 2), (4, 6)]
    reads.take()
    for version, published in ((1, True), (2, True), (3, False), (4, True), (5, True), (6, True), (7, False)):
        assert is_published(store, NAME, version) is published, version
        assert len(reads.take()) <= 2
    assert read_version(store, NAME, 2).version == 2


def test_as_ranges():
    assert as_ranges([]) == []
    assert as_ranges([5, 1, 2, 3, 3]) == [(1, 3), (5, 5)]
