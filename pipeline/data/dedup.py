"""Global deduplication without per-document state on the driver.

Every live document contributes one row per key: its content hash (exact duplicates) and, with
near-dedup, one row per LSH band of its MinHash signature (the band layout of datasketch's
`MinHashLSH` for the configured threshold). The rows are hash-partitioned by key (a shuffle of Ray
tasks, `dedup_stage.py`), so documents sharing a key meet in one partition, where `find_edges`
emits
- an exact edge from the first document of a hash (by `order`, i.e. `doc_key`) to each copy, and
- a near edge for each pair of distinct documents sharing a band whose signatures agree on at
  least `threshold` of their positions (the estimated Jaccard similarity).
Only edges leave the partitions, to one task (not the driver). `decide` then applies the
sequential rule ("keep first by doc_key": a document is dropped when it matches a document already
kept, here or in an earlier version) to the nodes of the edge graph in `order`; documents without
edges are kept without ever being looked at. Documents of earlier versions (their persisted index)
take part with negative orders: they are kept and never compared with one another.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DedupConfig
from .minhash import LEGACY_SCHEME, SCHEME

EXACT_BAND = 255  # key prefix of exact-hash rows (band indices are < 255)
EDGE_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("exact", pa.bool_()), ("jaccard", pa.float32())])
INDEX_SCHEMA = pa.schema(
    [("hash", pa.binary(16)), ("minhash", pa.list_(pa.uint32())), ("doc_key", pa.string())],
    metadata={"minhash_scheme": SCHEME},  # signatures of another scheme cannot be compared
)


@lru_cache(maxsize=8)
def bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(b, r): datasketch's optimal LSH layout for the threshold (on the driver: it imports scipy)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def key_rows(table: pa.Table, config: DedupConfig, layout: tuple[int, int]) -> pa.Table:
    """(order, hash, minhash) rows -> one row per (document, key); `layout` is `bands(...)`."""
    n = table.num_rows
    b, r = layout
    width = 1 + 4 * r
    hashes = np.frombuffer(table["hash"].combine_chunks().buffers()[1], np.uint8, n * 16).reshape(n, 16)
    keys = [np.hstack([np.full((n, 1), EXACT_BAND, np.uint8), hashes, np.zeros((n, width - 17), np.uint8)])]
    nears = [np.zeros(n, bool)]
    signatures = None
    if config.near:
        signatures = _signatures(table["minhash"], config.num_perm)
        for band in range(b):
            chunk = np.ascontiguousarray(signatures[:, band * r : (band + 1) * r]).view(np.uint8).reshape(n, 4 * r)
            keys.append(np.hstack([np.full((n, 1), band, np.uint8), chunk]))
            nears.append(np.ones(n, bool))
    copies = len(keys)
    key = np.vstack(keys).reshape(-1)
    columns = {
        "key": pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), copies * n, [None, pa.py_buffer(key.tobytes())]),
        "order": pa.array(np.tile(table["order"].to_numpy(), copies)),
        "hash": pa.concat_arrays([table["hash"].combine_chunks()] * copies),
    }
    if signatures is not None:
        flat = pa.array(np.tile(signatures, (copies, 1)).reshape(-1))
        columns["minhash"] = pa.FixedSizeListArray.from_arrays(flat, config.num_perm)
    return pa.table(columns)


def _signatures(column, num_perm: int) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(column.type, pa.FixedSizeListType):
        values = column.values.to_numpy()
    else:
        values = pc.list_flatten(column).to_numpy()
    return values.astype(np.uint32, copy=False).reshape(len(column), num_perm)


def find_edges(table: pa.Table, config: DedupConfig) -> pa.Table:
    """One hash partition of key rows -> its exact and verified near edges."""
    if table.num_rows < 2:
        return EDGE_SCHEMA.empty_table()
    table = table.take(pc.sort_indices(table, [("key", "ascending"), ("order", "ascending")]))
    width = table.schema.field("key").type.byte_width
    keys = np.frombuffer(table["key"].combine_chunks().buffers()[1], np.uint8, table.num_rows * width)
    keys = keys.reshape(-1, width)
    new_run = np.ones(len(keys), bool)
    new_run[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], len(keys))
    order = table["order"].to_numpy()
    hashes = table["hash"].to_pylist()
    signatures = _signatures(table["minhash"], config.num_perm) if "minhash" in table.column_names else None
    us, vs, exact, jaccard = [], [], [], []
    for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
        if keys[start, 0] == EXACT_BAND:  # one hash: the first by order is the representative
            us.extend([order[start]] * (end - start - 1))
            vs.extend(order[start + 1 : end].tolist())
            exact.extend([True] * (end - start - 1))
            jaccard.extend([1.0] * (end - start - 1))
            continue
        members, seen = [], set()
        for i in range(start, end):  # one row per distinct document (copies are exact edges)
            if hashes[i] not in seen:
                seen.add(hashes[i])
                members.append(i)
        if len(members) < 2:
            continue
        sig = signatures[members]
        for a in range(len(members) - 1):
            similarity = (sig[a + 1 :] == sig[a]).mean(axis=1)
            for b in np.flatnonzero(similarity >= config.threshold).tolist():
                u, v = order[members[a]], order[members[a + 1 + b]]
                if u < 0 and v < 0:
                    continue  # two documents of earlier versions: both stay
                us.append(u)
                vs.append(v)
                exact.append(False)
                jaccard.append(float(similarity[b]))
    return pa.table(
        [pa.array(us, pa.int64()), pa.array(vs, pa.int64()), pa.array(exact), pa.array(jaccard, pa.float32())],
        schema=EDGE_SCHEMA,
    )


def decide(edges: pa.Table, config: DedupConfig) -> pa.Table:
    """Removed documents (order, reason, match order, estimated Jaccard), from the edge graph."""
    if config.exact or config.near:
        edges = edges.group_by(["u", "v", "exact"]).aggregate([("jaccard", "max")])
    u, v = edges["u"].to_numpy(), edges["v"].to_numpy()
    is_exact = edges["exact"].to_numpy(zero_copy_only=False)
    similarity = edges["jaccard_max"].to_numpy() if edges.num_rows else np.zeros(0, np.float32)
    rep = dict(zip(v[is_exact].tolist(), u[is_exact].tolist(), strict=True))
    near_u = {}
    for a, b, s in zip(u[~is_exact].tolist(), v[~is_exact].tolist(), similarity[~is_exact].tolist(), strict=True):
        near_u.setdefault(b, []).append((a, s))
    removed: dict[int, tuple[str, int, float]] = {}
    for node in sorted(set(rep) | set(near_u)):
        if node < 0:
            continue  # documents of earlier versions are kept
        if node in rep:
            first = rep[node]
            if first not in removed:
                removed[node] = ("exact", first, 1.0) if config.exact else ("near", first, 1.0)
            else:  # the first copy matched a kept document: so does this copy
                removed[node] = ("near", removed[first][1], removed[first][2])
            continue
        # Among kept earlier neighbours, name the most similar (then the first) as the match.
        matches = [(-s, a) for a, s in near_u[node] if a < node and a not in removed]
        if matches:
            s, a = min(matches)
            removed[node] = ("near", a, -s)
    nodes = sorted(removed)
    return pa.table(
        {
            "order": pa.array(nodes, pa.int64()),
            "reason": pa.array([removed[n][0] for n in nodes], pa.string()),
            "match_order": pa.array([removed[n][1] for n in nodes], pa.int64()),
            "jaccard": pa.array([removed[n][2] for n in nodes], pa.float32()),
        }
    )


def index_table(kept: pa.Table, config: DedupConfig) -> pa.Table:
    """The persisted dedup index of kept documents (hash, minhash, doc_key)."""
    kept = kept.combine_chunks()
    if config.near and kept.num_rows:
        minhash = pa.ListArray.from_arrays(
            pa.array(np.arange(kept.num_rows + 1, dtype=np.int32) * config.num_perm),
            pa.array(_signatures(kept["minhash"], config.num_perm).reshape(-1)),
        )
    else:
        minhash = pa.nulls(kept.num_rows, pa.list_(pa.uint32()))
    return pa.table([kept["hash"].combine_chunks(), minhash, kept["doc_key"].combine_chunks()], schema=INDEX_SCHEMA)


def load_index(data: bytes, first_order: int, config: DedupConfig) -> pa.Table:
    """A persisted index file -> (order, hash, minhash, doc_key) rows with negative orders from
    `first_order` down (documents of earlier versions come before every new document)."""
    table = pa.ipc.open_file(io.BytesIO(data)).read_all()
    scheme = (table.schema.metadata or {}).get(b"minhash_scheme", LEGACY_SCHEME.encode()).decode()
    if config.near and scheme != SCHEME:  # `stage.check_dedup_scheme` refuses such parents up front
        raise ValueError(f"dedup index signatures use MinHash scheme {scheme!r}, not {SCHEME!r}")
    n = table.num_rows
    doc_key = table["doc_key"] if "doc_key" in table.column_names else pa.nulls(n, pa.string())
    columns = {
        "order": pa.array(np.arange(first_order, first_order - n, -1, dtype=np.int64)),
        "hash": table["hash"],
        "doc_key": doc_key,
    }
    if config.near:
        flat = _signatures(table["minhash"], config.num_perm).reshape(-1)
        columns["minhash"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), config.num_perm)
    return pa.table(columns)
