"""Dedup executor: key rows -> exchange by key -> edges -> connected components -> decisions ->
per record block, its removed documents; and the persisted per-run dedup index (one Arrow file per
block of kept documents).

Every step is a round of Ray tasks whose inputs and outputs are exchanges on storage
(`exchange.py`): no task holds more than a partition, and the driver holds O(blocks + partitions)
references and a few counts per round. See `dedup.py` for the keys and edges, `components.py`
for the components; the rule is: within a connected component of the duplicate graph, the
smallest `order` (the first by doc_key; documents of earlier versions come first) is kept and
every other new document is removed, naming that kept document as its match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DedupConfig
from .blocks import Blocks, split_by, write_table
from .components import components, labels, node_parts
from .dedup import EDGE_SCHEMA, find_edges, index_table, key_rows, load_index
from .exchange import Scratch
from .plan import _LINE_BITS, Finalize
from .shards import to_ipc_bytes

if TYPE_CHECKING:
    from ..records import Manifest


def _prints(batch: pa.Table, near: bool) -> pa.Table:
    """Live documents' fingerprints; rows of an earlier version's index are all live."""
    columns = ["order", "hash", "doc_key"] + (["minhash"] if near else [])
    return (batch.filter(pc.is_null(batch["reject"])) if "reject" in batch.column_names else batch).select(columns)


def _key_partitions(
    batch: pa.Table, first: int | None, config: DedupConfig, layout: tuple[int, int], parts: int
) -> list[pa.Table]:
    """Exchange map side: one block's key rows, split into `parts` tables by a hash of the key. A
    block with a `first` order is an earlier version's index file: its documents take the orders
    from `first` down."""
    if first is not None:
        batch = load_index(batch, first, config)
    prints = _prints(batch, config.near)
    # A document makes 1 + b rows of ~600 bytes: a block of short documents has many times its
    # text in key rows, so they are built and split KEY_CHUNK documents at a time (one chunk's
    # temporaries, not the block's); each partition keeps its chunks (no concatenating copy).
    split = [
        _split_keys(key_rows(prints.slice(at, KEY_CHUNK), config, layout), parts)
        for at in range(0, prints.num_rows, KEY_CHUNK)
    ]
    if not split:
        return [key_rows(prints, config, layout)] * parts
    return [pa.concat_tables([chunk[p] for chunk in split]) for p in range(parts)]


KEY_CHUNK = 16384


def _split_keys(rows: pa.Table, parts: int) -> list[pa.Table]:
    width = rows.schema.field("key").type.byte_width
    keys = np.frombuffer(rows["key"].combine_chunks().buffers()[1], np.uint8, rows.num_rows * width)
    keys = keys.reshape(-1, width)
    mixed = keys[:, 1:5].copy().view("<u4").reshape(-1).astype(np.int64) + keys[:, 0].astype(np.int64) * 40503
    return split_by(rows, mixed % parts, parts)


def _edge_list(rows: pa.Table | None, config: DedupConfig) -> pa.Table:
    """The verified edges among one key partition's rows (stored: their count sizes the node
    partitions, which need far fewer than the key rows)."""
    return EDGE_SCHEMA.empty_table() if rows is None else find_edges(rows, config)


EDGE_BYTES = 2 * (8 + 8 + 1 + 4)  # an edge is a row at each of its two ends


def _by_node(edges: pa.Table, parts: int) -> list[pa.Table]:
    """Edges as rows keyed by each end (node, other, exact, jaccard): the first components round's
    input, and each node's evidence for the decision. `exact` is set on the copy's row only (its
    `other` is the first copy)."""
    u, v = edges["u"].to_numpy(), edges["v"].to_numpy()
    exact = edges["exact"].to_numpy(zero_copy_only=False)
    jaccard = edges["jaccard"].to_numpy()
    table = pa.table(
        {
            "node": pa.array(np.concatenate([v, u]), pa.int64()),
            "other": pa.array(np.concatenate([u, v]), pa.int64()),
            "exact": pa.array(np.concatenate([exact, np.zeros(len(u), bool)])),
            "jaccard": pa.array(np.concatenate([jaccard, jaccard]), pa.float32()),
        }
    )
    return split_by(table, node_parts(table["node"].to_numpy(), parts), parts)


REMOVED_SCHEMA = pa.schema(
    [
        ("order", pa.int64()),
        ("reason", pa.string()),
        ("match_order", pa.int64()),
        ("jaccard", pa.float32()),
        ("match_doc_key", pa.string()),
    ]
)


def _decide(
    rows: pa.Table | None, labels: pa.Table | None, config: DedupConfig, namer: Namer, router, n_blocks: int, n_old: int
) -> tuple[list[pa.Table], tuple[int, int, int]]:
    """One node partition's decisions: every new document whose component's smallest node is not
    itself is removed, matching that node. The reason is exact when it is a copy of that very
    document; the Jaccard is its estimate with the match when they share a band, else with its
    most similar neighbour. A match of this run is named here (from its order alone) and the row
    goes to the partition of the removed document's block; a match of an earlier version goes to
    the partition of that version's index file (after the blocks), which names it."""
    parts = n_blocks + n_old
    if rows is None or labels is None or not labels.num_rows:
        return [REMOVED_SCHEMA.empty_table()] * parts, (0, 0, 0)
    node = rows["node"].to_numpy()
    label = labels["label"].to_numpy()[pc.index_in(rows["node"], value_set=labels["node"]).to_numpy()]
    other, jaccard = rows["other"].to_numpy(), rows["jaccard"].to_numpy()
    exact = rows["exact"].to_numpy(zero_copy_only=False)
    to_label = other == label
    evidence = pa.table(
        {
            "node": node,
            "label": label,
            "to_label": np.where(to_label, jaccard, -1.0),
            "near": np.where(exact, -1.0, jaccard),
            "any": jaccard,
            "copy": exact & to_label,
        }
    )
    per_node = evidence.filter(pa.array((node >= 0) & (label != node))).group_by(["node", "label"])
    per_node = per_node.aggregate([("to_label", "max"), ("near", "max"), ("any", "max"), ("copy", "any")])
    per_node = per_node.take(pc.sort_indices(per_node["node"]))
    copy = per_node["copy_any"].to_numpy(zero_copy_only=False) & config.exact
    best, near = per_node["to_label_max"].to_numpy(), per_node["near_max"].to_numpy()
    best = np.where(best >= 0, best, np.where(near >= 0, near, per_node["any_max"].to_numpy()))
    matches, orders = per_node["label"].to_numpy(), per_node["node"].to_numpy()
    new = matches >= 0
    names = pa.nulls(len(matches), pa.string())
    if new.any():  # (an old match's name comes from its index file: `_name_old`)
        names = pc.if_else(pa.array(new), namer(np.where(new, matches, 0)), names)
    removed = pa.table(
        {
            "order": per_node["node"],
            "reason": pa.array(np.where(copy, "exact", "near").tolist(), pa.string()),
            "match_order": per_node["label"],
            "jaccard": pa.array(np.where(copy, 1.0, best), pa.float32()),
            "match_doc_key": names,
        },
        schema=REMOVED_SCHEMA,
    )
    to = np.empty(len(orders), np.int64)
    if new.any():
        to[new] = router(orders[new])
    to[~new] = n_blocks + ((-matches[~new] - 1) >> _OLD_SHIFT)
    stats = (removed.num_rows, int(copy.sum()), int((~copy).sum()))
    return split_by(removed, to, parts), stats


_OLD_SHIFT = 34
_OLD_FILE_SPAN = 1 << _OLD_SHIFT  # negative orders of one earlier index file: -(file << 34) - row - 1


class Namer:
    """`order` -> `doc_key` of this run's documents, from per-file state only (the file's prefix
    and the line: see `plan.Finalize`), so naming a match never fetches its record block."""

    def __init__(self, units) -> None:
        finalize = Finalize(units, np.zeros(1, np.int64))
        self.prefixes = finalize.prefixes
        self.unit_of_rank = np.argsort(finalize.rank)

    def __call__(self, orders: np.ndarray) -> pa.Array:
        unit = self.unit_of_rank[orders >> _LINE_BITS]
        number = pc.utf8_lpad(pc.cast(pa.array(orders & ((1 << _LINE_BITS) - 1)), pa.string()), 10, "0")
        return pc.binary_join_element_wise(pc.take(self.prefixes, pa.array(unit)), number, "")


def _name_old(rows: pa.Table | None, index: pa.Table | None, router, n_blocks: int) -> list[pa.Table]:
    """An earlier version's index file's part: the matches it holds named (its `index` table is
    read only when some removed document matched one of its documents), each row sent to the
    removed document's block."""
    if rows is None:
        return [REMOVED_SCHEMA.empty_table()] * n_blocks
    row = pa.array((-rows.column("match_order").to_numpy() - 1) & (_OLD_FILE_SPAN - 1))
    n = index.num_rows
    doc_key = index.column("doc_key") if "doc_key" in index.column_names else pa.nulls(n, pa.string())
    # Index files written before doc_keys were recorded name a document by its content hash.
    by_hash = pa.array([f"sha256:{d.hex()}" for d in pc.take(index.column("hash"), row).to_pylist()])
    names = pc.coalesce(pc.take(doc_key, row), by_hash)
    rows = rows.set_column(rows.schema.get_field_index("match_doc_key"), "match_doc_key", names)
    return split_by(rows, router(rows.column("order").to_numpy()), n_blocks)


def _removed_of_block(rows: pa.Table | None) -> pa.Table:
    """A record block's removed documents, by order."""
    if rows is None:
        return REMOVED_SCHEMA.empty_table()
    return rows.take(pc.sort_indices(rows["order"])).cast(REMOVED_SCHEMA)


def kept_records(batch: pa.Table, removed: pa.Table) -> pa.Table:
    """The records of a block that are kept: not rejected, and not among its `removed` documents
    (those decontamination only flagged, `kept` true, are kept: `decontaminate.py`)."""
    live = pc.is_null(batch["reject"])
    if "kept" in removed.column_names:
        removed = removed.filter(pc.invert(removed["kept"]))
    if removed.num_rows:
        live = pc.and_(live, pc.invert(pc.is_in(batch["order"], value_set=removed["order"])))
    return batch.filter(live)


@dataclass(frozen=True)
class DedupStats:
    """Documents a run's dedup removed: all, exact and near duplicates; components rounds run."""

    removed: int = 0
    exact: int = 0
    near: int = 0
    rounds: int = 0

    def by_reason(self) -> dict[str, int]:
        """The manifest's `duplicates` counts."""
        return {"exact": self.exact, "near": self.near}


def shuffle_partitions(
    live_docs: int, config: DedupConfig, layout: tuple[int, int], blocks: int, cpus: int, partition_bytes: int
) -> int:
    """Reduce tasks of the dedup shuffle: at least one per block up to 4 per core (every core busy),
    and enough that a partition holds about `partition_bytes` of key rows (each document is 1 + b
    rows, each carrying its signature with near-dedup), so no reduce task outgrows its worker."""
    row_bytes = max(17, 1 + 4 * layout[1]) + 8 + 16 + (4 * config.num_perm if config.near else 0)
    rows = live_docs * (1 + (layout[0] if config.near else 0))
    return max(1, min(blocks, 4 * cpus), -(-rows * row_bytes // partition_bytes))


def deduplicate(
    records,
    units,
    scratch: Scratch,
    parent: Manifest | None,
    config: DedupConfig,
    cpus: int,
    layout,
    live_docs: int,
    partition_bytes: int,
) -> tuple[Blocks, DedupStats]:
    """(per record block, its removed documents (`REMOVED_SCHEMA`), stored as blocks; counts).
    Exchanges: key rows by key -> edges by node -> components rounds -> decisions by the block of
    the match (to name it) -> by the block of the removed document. `scratch(name, parts)` gives
    each exchange of the build its `Exchange`. `layout` is `dedup.bands(...)` (or a future of it:
    it takes the driver about 0.4 s, so the stage starts it before reading)."""
    n_blocks = len(records)
    if not (config.exact or config.near):
        return _none_removed(scratch, n_blocks), DedupStats()
    index_keys = list(parent.dedup_index) if parent is not None else []
    # Earlier versions' index files take part as blocks of their own, with negative orders.
    sources = Blocks(records.keys + index_keys, scratch)
    firsts = [None] * n_blocks + [-(i * _OLD_FILE_SPAN) - 1 for i in range(len(index_keys))]
    layout = layout.result() if hasattr(layout, "result") else layout
    if parent is not None and parent.stats is not None:
        live_docs += int(parent.stats.total.docs_kept)  # earlier versions' rows
    parts = shuffle_partitions(live_docs, config, layout, len(sources), cpus, partition_bytes)
    keyed = sources.shuffle(_key_partitions, scratch("keys", parts), config, layout, parts, each=firsts)
    edge_lists = keyed.reduce_to(_edge_list, scratch, "edge-lists", config)
    edges = sum(edge_lists.rows)
    if edges == 0:
        return _none_removed(scratch, n_blocks), DedupStats()
    # Node partitions are sized by the edges (a few bytes each), not by the key rows: far fewer.
    nodes = max(1, min(parts, 4 * cpus), -(-edges * EDGE_BYTES // partition_bytes))
    with_edges = Blocks([k for k, rows in zip(edge_lists.keys, edge_lists.rows, strict=True) if rows], scratch)
    by_node = with_edges.shuffle(_by_node, scratch("edges", nodes), nodes)
    final, rounds = components(by_node, lambda name: scratch(name, nodes), nodes)
    labelled = final.reduce_to(labels, scratch, "labels")
    n_old = len(index_keys)
    decided = by_node.reduce_into(
        _decide, scratch("decided", n_blocks + n_old), config, Namer(units), records.router, n_blocks, n_old,
        each=labelled,
    )  # fmt: skip
    counts = np.sum(decided.extras, axis=0)
    if n_old:  # matches of earlier versions are named by their index file's part
        named = decided.reduce_into(
            _name_old,
            scratch("named-old", n_blocks),
            records.router,
            n_blocks,
            each=Blocks(index_keys, scratch),
            partitions=range(n_blocks, n_blocks + n_old),
        )
        decided = decided.plus(named)
    removed = decided.reduce_to(_removed_of_block, scratch, "removed", partitions=range(n_blocks))
    return removed, DedupStats(*(int(c) for c in counts), rounds=rounds)


def _none_removed(scratch: Scratch, n_blocks: int) -> Blocks:
    key = f"{scratch.prefix}/removed/none.arrow"
    return Blocks([write_table(scratch.root, scratch.settings, key, REMOVED_SCHEMA.empty_table())] * n_blocks, scratch)


def write_index(records: Blocks, removed: Blocks, store, settings, prefix: str, config: DedupConfig) -> list[str]:
    """This run's kept documents (hash, minhash, doc_key) as Arrow files, one per read block (so the
    files do not depend on how blocks are cut for tokenizing); returns their keys, sorted."""
    keys = records.collect(_write_index_block, store.root_uri, settings, prefix, config, each=removed)
    return sorted(key for key in keys if key)


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
