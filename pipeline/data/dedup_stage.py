"""Dedup executor: key rows -> shuffle by key bucket (Ray Data groupby) -> edges -> decisions,
and the persisted per-run dedup index (one Arrow file per block of kept documents).

See `dedup.py` for the rule. The driver holds the edge graph only (pairs of duplicate candidates
that passed verification), never a row per document.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DedupConfig
from .dedup import EDGE_SCHEMA, bands, decide, find_edges, index_table, key_rows, load_index
from .shards import to_ipc_bytes

_OLD_FILE_SPAN = 1 << 34  # negative orders of one earlier index file: -(file << 34) - row - 1


def _prints(batch: pa.Table, near: bool) -> pa.Table:
    columns = ["order", "hash", "doc_key"] + (["minhash"] if near else [])
    return batch.filter(pc.is_null(batch["reject"])).select(columns)


def _bucketed(batch: pa.Table, config: DedupConfig, layout: tuple[int, int], buckets: int) -> pa.Table:
    rows = key_rows(batch, config, layout)
    width = rows.schema.field("key").type.byte_width
    keys = np.frombuffer(rows["key"].combine_chunks().buffers()[1], np.uint8, rows.num_rows * width)
    keys = keys.reshape(-1, width)
    mixed = keys[:, 1:5].copy().view("<u4").reshape(-1).astype(np.int64) + keys[:, 0].astype(np.int64) * 40503
    return rows.append_column("bucket", pa.array(mixed % buckets))


def deduplicate(records, store, settings, parent: dict | None, config: DedupConfig) -> tuple[pa.Table, None]:
    """Removed documents: order, reason ('exact'/'near'), match_order, match_doc_key, jaccard."""
    import ray.data

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
        return empty, None
    prints = records.map_batches(_prints, fn_args=(config.near,), batch_format="pyarrow", batch_size=None)
    index_keys = (parent or {}).get("dedup_index", [])
    if index_keys:
        old = ray.data.from_items(
            [{"key": key, "first": -(i * _OLD_FILE_SPAN) - 1} for i, key in enumerate(index_keys)],
            override_num_blocks=len(index_keys),
        ).map_batches(_load_old, fn_args=(store.root_uri, settings, config), batch_format="pyarrow", batch_size=1)
        prints = prints.union(old)
    prints = prints.materialize()
    layout = bands(config.threshold, config.num_perm)
    rows = prints.count() * (1 + (layout[0] if config.near else 0))
    buckets = max(8, rows // 65536)
    edges = (
        prints.map_batches(_bucketed, fn_args=(config, layout, buckets), batch_format="pyarrow", batch_size=None)
        .groupby("bucket", num_partitions=max(1, min(buckets, prints.num_blocks())))
        .map_groups(lambda group: find_edges(group, config), batch_format="pyarrow")
    )
    edge_tables = [b.cast(EDGE_SCHEMA) for b in edges.iter_batches(batch_format="pyarrow", batch_size=None)]
    removed = decide(pa.concat_tables([EDGE_SCHEMA.empty_table(), *edge_tables]), config)
    if not removed.num_rows:
        return empty, None
    matches = pa.array(np.unique(removed["match_order"].to_numpy()))
    names = prints.map_batches(
        lambda b: b.select(["order", "doc_key", "hash"]).filter(pc.is_in(b["order"], value_set=matches)),
        batch_format="pyarrow",
        batch_size=None,
    ).take_all()
    by_order = {r["order"]: r["doc_key"] or f"sha256:{r['hash'].hex()}" for r in names}
    match_doc_key = pa.array([by_order.get(o) for o in removed["match_order"].to_pylist()], pa.string())
    return removed.append_column("match_doc_key", match_doc_key), None


def _load_old(batch: pa.Table, root: str, settings, config: DedupConfig) -> pa.Table:
    from .readers import _store

    store = _store(root, settings)
    key, first = batch["key"][0].as_py(), batch["first"][0].as_py()
    return load_index(store.read(key), first, config)


def write_index(kept, store, settings, prefix: str, config: DedupConfig) -> list[str]:
    """This run's kept documents (hash, minhash, doc_key) as Arrow files, one per block; returns keys."""
    root = store.root_uri

    def write(batch: pa.Table) -> pa.Table:
        from .readers import _store

        if not batch.num_rows:
            return pa.table({"key": pa.array([], pa.string())})
        batch = batch.take(pc.sort_indices(batch["order"]))
        body = to_ipc_bytes(index_table(batch, config))
        key = f"{prefix}/part-{hashlib.sha256(body).hexdigest()[:16]}.arrow"
        _store(root, settings).write(key, body)
        return pa.table({"key": [key]})

    rows = kept.select_columns(["order", "hash", "minhash", "doc_key"]).map_batches(
        write, batch_format="pyarrow", batch_size=None
    )
    return sorted(row["key"] for row in rows.take_all())
