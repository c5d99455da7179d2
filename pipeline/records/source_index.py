"""The source index of a dataset version: every source file as it was when the version was built.

One Arrow IPC file per version (`DatasetKeys.source_index`: columns uri, size, version,
source_index; sorted by uri; compressed), written create-if-absent before the manifest that names
it (`Manifest.source_index`). A refresh diffs the files it lists now against its parent's index
(`unindexed`): the driver holds one Arrow table, not an object per file, and the manifest stays
small however many files the corpus has. Manifests written before the index list their files as
JSON (`Manifest.sources`); `read_source_index` and `source_entries` read either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import UserError
from ..keys import DatasetKeys
from ..storage import ObjectStore
from .dataset import Manifest, SourceEntry

SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("version", pa.string()), ("source_index", pa.int32())])
FINGERPRINT = ["uri", "size", "version"]  # what a refresh diffs (pipeline/data/sources.py `fingerprint`)


def source_table(entries: Sequence[Any]) -> pa.Table:
    """The index rows of `entries` (source units or `SourceEntry`s), in their order.

    Versions (an ETag or an mtime) are text, as source listing reports them; anything else in a
    manifest written before the index is kept as its text."""
    columns = {
        "uri": [e.uri for e in entries],
        "size": [e.size for e in entries],
        "version": [e.version if isinstance(e.version, str) else str(e.version) for e in entries],
        "source_index": [e.source_index for e in entries],
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def _compression() -> str | None:
    return next((codec for codec in ("zstd", "lz4") if pa.Codec.is_available(codec)), None)


def encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=_compression())
    with pa.ipc.new_file(sink, SCHEMA, options=options) as writer:
        writer.write_table(table.sort_by("uri"), max_chunksize=1 << 16)
    return sink.getvalue().to_pybytes()


def decode(data: bytes, key: str = "source index") -> pa.Table:
    try:
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    except pa.ArrowInvalid as error:
        raise ValueError(f"malformed source index {key} ({error})") from None
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"malformed source index {key} (columns {table.schema.names}, expected {SCHEMA.names})")
    return table


def write_source_index(store: ObjectStore, name: str, version: int, run_id: str, entries: Sequence[Any]) -> str:
    """Write version `version`'s index of `entries` (create-if-absent); returns its key."""
    key = DatasetKeys(name).source_index(version, run_id)
    if not store.create(key, encode(source_table(entries))):
        raise UserError(f"{store.uri(key)} already exists: another writer used run id {run_id}")
    return key


def read_source_index(store: ObjectStore, manifest: Manifest) -> pa.Table:
    """Every source file of `manifest`'s version, as an index table (one read of its index file, or
    its JSON `sources` for a manifest written before the index)."""
    if manifest.source_index is None:
        return source_table(manifest.sources)
    return decode(store.read(manifest.source_index), manifest.source_index)


def source_entries(store: ObjectStore, manifest: Manifest) -> list[SourceEntry]:
    """Every source file of `manifest`'s version, one `SourceEntry` each (for readers that want
    objects; a refresh diffs the table of `read_source_index`)."""
    if manifest.source_index is None:
        return list(manifest.sources)
    return [SourceEntry(**row) for row in read_source_index(store, manifest).to_pylist()]


def unindexed(entries: Sequence[Any], index: pa.Table | None) -> list[Any]:
    """The entries (source units) whose (uri, size, version) is no row of `index`: the new and
    changed files, in their order. A hash join of two Arrow tables, no Python object per row."""
    if index is None or not entries:
        return list(entries)
    current = source_table(entries).select(FINGERPRINT).append_column("position", pa.array(np.arange(len(entries))))
    unknown = current.join(index.select(FINGERPRINT), keys=FINGERPRINT, join_type="left anti")
    return [entries[i] for i in np.sort(unknown["position"].to_numpy())]
