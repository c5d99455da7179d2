"""Dedup executor: key rows -> hash-partitioned shuffle by key (Ray tasks, `blocks.py`) -> edges
-> decisions, and the persisted per-run dedup index (one Arrow file per block of kept documents).

See `dedup.py` for the rule. The driver holds the edge graph only (pairs of duplicate candidates
that passed verification), never a row per document.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DedupConfig
from .blocks import Blocks, reduce_partitions, split_by, split_remote
from .dedup import EDGE_SCHEMA, decide, find_edges, index_table, key_rows, load_index
from .shards import to_ipc_bytes

if TYPE_CHECKING:
    from ..records import Manifest

_OLD_FILE_SPAN = 1 << 34  # negative orders of one earlier index file: -(file << 34) - row - 1


def _prints(batch: pa.Table, near: bool) -> pa.Table:
    """Live documents' fingerprints; rows of an earlier version's index are all live."""
    columns = ["order", "hash", "doc_key"] + (["minhash"] if near else [])
    return (batch.filter(pc.is_null(batch["reject"])) if "reject" in batch.column_names else batch).select(columns)


def _key_partitions(batch: pa.Table, config: DedupConfig, layout: tuple[int, int], parts: int) -> list[pa.Table]:
    """Shuffle map side: one block's key rows, split into `parts` tables by a hash of the key."""
    rows = key_rows(_prints(batch, config.near), config, layout)
    width = rows.schema.field("key").type.byte_width
    keys = np.frombuffer(rows["key"].combine_chunks().buffers()[1], np.uint8, rows.num_rows * width)
    keys = keys.reshape(-1, width)
    mixed = keys[:, 1:5].copy().view("<u4").reshape(-1).astype(np.int64) + keys[:, 0].astype(np.int64) * 40503
    part = mixed % parts
    return split_by(rows, part, parts)


def _edges(rows: pa.Table | None, config: DedupConfig) -> pa.Table:
    """Shuffle reduce side: the edges among the key rows of one partition."""
    return EDGE_SCHEMA.empty_table() if rows is None else find_edges(rows, config).cast(EDGE_SCHEMA)


def _names(batch: pa.Table, matches: pa.Array) -> pa.Table:
    """The documents of a block that some removed document matched: order -> name."""
    # Matches are kept documents: live records here, or rows of an earlier version's index.
    wanted = pc.is_in(batch["order"], value_set=matches)
    named = batch.select(["order", "doc_key", "hash"]).filter(wanted)
    # Index files written before doc_keys were recorded name a document by its content hash.
    by_hash = pa.array([f"sha256:{digest.hex()}" for digest in named["hash"].to_pylist()], pa.string())
    return pa.table({"order": named["order"], "name": pc.coalesce(named["doc_key"], by_hash)})


def _decide(config: DedupConfig, *edges: pa.Table) -> pa.Table:
    return decide(pa.concat_tables([EDGE_SCHEMA.empty_table(), *edges]), config)


def _attach_names(removed: pa.Table, *names: pa.Table) -> pa.Table:
    names = pa.concat_tables([pa.table({"order": pa.array([], pa.int64()), "name": pa.array([], pa.string())}), *names])
    index = pc.index_in(removed["match_order"], value_set=names["order"])
    return removed.append_column("match_doc_key", pc.take(names["name"], index))


def kept_records(batch: pa.Table, removed: pa.Table) -> pa.Table:
    """The records of a block that are kept: not rejected, and not among its `removed` documents."""
    live = pc.is_null(batch["reject"])
    if removed.num_rows:
        live = pc.and_(live, pc.invert(pc.is_in(batch["order"], value_set=removed["order"])))
    return batch.filter(live)


def _match_orders(removed: pa.Table) -> pa.Array:
    return pc.unique(removed["match_order"])


def _by_block(removed: pa.Table, router, n: int) -> list[pa.Table]:
    """The removed documents split by the record block that holds each (see `BlockRouter`)."""
    block = router(removed["order"].to_numpy()) if removed.num_rows else np.zeros(0, np.int64)
    return split_by(removed, block, n)


@dataclass(frozen=True)
class DedupStats:
    """Documents a run's dedup removed: all, exact and near duplicates."""

    removed: int = 0
    exact: int = 0
    near: int = 0

    def by_reason(self) -> dict[str, int]:
        """The manifest's `duplicates` counts."""
        return {"exact": self.exact, "near": self.near}


def _summary(removed: pa.Table) -> DedupStats:
    reasons = removed["reason"].to_numpy(zero_copy_only=False)
    return DedupStats(removed.num_rows, *(int((reasons == r).sum()) for r in ("exact", "near")))


def shuffle_partitions(live_docs: int, config: DedupConfig, layout: tuple[int, int], blocks: int, cpus: int) -> int:
    """Reduce tasks of the dedup shuffle: at least one per block up to 4 per core (every core busy),
    and enough that a partition holds about `PARTITION_BYTES` of key rows (each document is 1 + b
    rows, each carrying its signature with near-dedup), so no reduce task outgrows its worker."""
    row_bytes = max(17, 1 + 4 * layout[1]) + 8 + 16 + (4 * config.num_perm if config.near else 0)
    rows = live_docs * (1 + (layout[0] if config.near else 0))
    return max(1, min(blocks, 4 * cpus), -(-rows * row_bytes // PARTITION_BYTES))


PARTITION_BYTES = 256 << 20


def deduplicate(
    records: Blocks,
    store,
    settings,
    parent: Manifest | None,
    config: DedupConfig,
    cpus: int,
    layout,
    live_docs: int,
) -> tuple[list, DedupStats]:
    """(per record block, a reference to its removed documents' table; counts). The tables (order,
    reason ('exact'/'near'), match_order, jaccard, match_doc_key) are built and used on workers:
    the driver gets only the counts, nothing per document. `layout` is `dedup.bands(...)` (or a
    future of it: it takes the driver about 0.4 s, so the stage starts it before reading)."""
    import ray

    empty = pa.table(
        {
            "order": pa.array([], pa.int64()),
            "reason": pa.array([], pa.string()),
            "match_order": pa.array([], pa.int64()),
            "jaccard": pa.array([], pa.float32()),
            "match_doc_key": pa.array([], pa.string()),
        }
    )
    if not (config.exact or config.near):
        return [ray.put(empty)] * len(records), _summary(empty)
    blocks = records  # and earlier versions' index rows; `_prints` reduces each in its task
    index_keys = parent.dedup_index if parent is not None else []
    if index_keys:
        load = ray.remote(_load_old)
        old = [
            load.remote(key, -(i * _OLD_FILE_SPAN) - 1, store.root_uri, settings, config)
            for i, key in enumerate(index_keys)
        ]
        blocks = Blocks(blocks.refs + old)
    layout = layout.result() if hasattr(layout, "result") else layout
    if parent is not None and parent.stats is not None:
        live_docs += int(parent.stats.total.docs_kept)  # earlier versions' rows
    parts = shuffle_partitions(live_docs, config, layout, len(blocks), cpus)
    edges = reduce_partitions(_edges, blocks.partition(_key_partitions, parts, config, layout, parts), config)
    # The decision is sequential in document order ("keep first"), over the edge graph only: one
    # task holds it (a few dozen bytes per candidate pair), the driver never does.
    removed = ray.remote(_decide).remote(config, *edges)
    names = blocks.map(_names, ray.remote(_match_orders).remote(removed))
    removed = ray.remote(_attach_names).remote(removed, *names.refs)
    # Each record block's tasks (kept filter, rejects, index) get only the removed documents it
    # holds, not the whole table.
    by_block = split_remote(_by_block, len(records), removed, records.router, len(records))
    return by_block, ray.get(ray.remote(_summary).remote(removed))


def _load_old(key: str, first: int, root: str, settings, config: DedupConfig) -> pa.Table:
    from .readers import _store

    return load_index(_store(root, settings).read(key), first, config)


def write_index(records: Blocks, removed: list, store, settings, prefix: str, config: DedupConfig) -> Blocks:
    """This run's kept documents (hash, minhash, doc_key) as Arrow files, one per read block (so the
    files do not depend on how blocks are cut for tokenizing), written by tasks while the driver
    goes on; `index_keys` waits for them."""
    return records.map(_write_index_block, store.root_uri, settings, prefix, config, each=removed)


def index_keys(written: Blocks) -> list[str]:
    """The keys of `write_index`'s files, once written."""
    import ray

    return sorted(key for key in ray.get(written.refs) if key)


def _write_index_block(
    batch: pa.Table, removed: pa.Table, root: str, settings, prefix: str, config: DedupConfig
) -> str | None:
    from .readers import _store

    batch = kept_records(batch, removed)
    if not batch.num_rows:
        return None
    batch = batch.select(["order", "hash", "minhash", "doc_key"]).take(pc.sort_indices(batch["order"]))
    body = to_ipc_bytes(index_table(batch, config))
    key = f"{prefix}/part-{hashlib.sha256(body).hexdigest()[:16]}.arrow"
    _store(root, settings).write(key, body)
    return key
