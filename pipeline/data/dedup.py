"""Global deduplication without per-document state on the driver: the keys and the edges.

Every live document contributes one row per key: its content hash (exact duplicates) and, with
near-dedup, one row per LSH band of its MinHash signature (the band layout of datasketch's
`MinHashLSH` for the configured threshold). The rows are hash-partitioned by key (an exchange of
Ray tasks, `dedup_stage.py`), so documents sharing a key meet in one partition, where `find_edges`
emits
- an exact edge from the first document of a hash (by `order`, i.e. `doc_key`) to each copy, and
- a near edge for each pair of documents sharing a band whose signatures agree on at least
  `threshold` of their positions (the estimated Jaccard similarity); in a band bucket of more than
  `REPRESENTATIVES` documents, only with a bounded set of leaders.
The decision is made on the edge graph by tasks (`components.py`, `dedup_stage.py`): in each
connected component, the document with the smallest order is kept and every other new document is
removed. Documents without edges are kept without ever being looked at. Documents of earlier
versions (their persisted index) take part with negative orders: they are kept, never compared
with one another, and a component holding one keeps no new document.
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


REPRESENTATIVES = 64  # members of a large band bucket that every later member is compared with
_CHUNK = 1024  # members compared with the representatives at once (chunk x reps x num_perm bytes)


def find_edges(table: pa.Table, config: DedupConfig, representatives: int = REPRESENTATIVES) -> pa.Table:
    """One hash partition of key rows -> its exact and verified near edges (u < v by order).

    A band bucket of at most `representatives` members compares every pair. A larger one (a
    boilerplate cluster: 10^5 near-identical pages would be 5 x 10^9 pairs) compares each member
    with at most `representatives` leaders instead: members in order, each joins (gets one edge to)
    its most similar leader, or becomes a leader while there are fewer than `representatives`.
    The trade-off: two similar members that resemble no leader, once the leaders are full, get no
    edge from this bucket (they can still meet in another band). Work is O(members x leaders)."""
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
    signatures = _signatures(table["minhash"], config.num_perm) if "minhash" in table.column_names else None
    edges = _Edges()
    for start, end in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist(), strict=True):
        members = order[start:end]
        if members[-1] < 0:
            continue  # only documents of earlier versions (orders ascend): they all stay
        if keys[start, 0] == EXACT_BAND:  # one hash: the first by order is the representative
            copies = members[1:][(members[0] >= 0) | (members[1:] >= 0)]  # earlier versions: all stay
            edges.add(np.full(len(copies), members[0]), copies, True, np.ones(len(copies), np.float32))
        elif end - start <= representatives:
            _all_pairs(edges, members, signatures[start:end], config.threshold)
        else:
            _leaders(edges, members, signatures[start:end], config.threshold, representatives)
    return edges.table()


class _Edges:
    def __init__(self) -> None:
        self.parts: list[tuple] = []

    def add(self, u: np.ndarray, v: np.ndarray, exact: bool, jaccard: np.ndarray) -> None:
        keep = (u >= 0) | (v >= 0)  # two documents of earlier versions: both stay, never linked
        if keep.any():
            self.parts.append((u[keep], v[keep], np.full(int(keep.sum()), exact), jaccard[keep]))

    def table(self) -> pa.Table:
        if not self.parts:
            return EDGE_SCHEMA.empty_table()
        u, v, exact, jaccard = (np.concatenate(column) for column in zip(*self.parts, strict=True))
        columns = [pa.array(u, pa.int64()), pa.array(v, pa.int64()), pa.array(exact), pa.array(jaccard, pa.float32())]
        return pa.table(columns, schema=EDGE_SCHEMA)


def _all_pairs(edges: _Edges, members: np.ndarray, sig: np.ndarray, threshold: float) -> None:
    similarity = (sig[:, None, :] == sig[None, :, :]).mean(axis=2)
    a, b = np.nonzero(np.triu(similarity >= threshold, k=1))
    edges.add(members[a], members[b], False, similarity[a, b].astype(np.float32))


def _leaders(edges: _Edges, members: np.ndarray, sig: np.ndarray, threshold: float, limit: int) -> None:
    leaders = [0]
    for first in range(1, len(members), _CHUNK):
        chunk = np.arange(first, min(first + _CHUNK, len(members)))
        similarity = (sig[chunk][:, None, :] == sig[leaders][None, :, :]).mean(axis=2)
        best, score = similarity.argmax(axis=1), similarity.max(axis=1)
        joined = score >= threshold
        edges.add(members[np.array(leaders)[best[joined]]], members[chunk[joined]], False, score[joined])
        for i in chunk[~joined].tolist():  # in order: may become leaders, which later members meet
            against = (sig[leaders] == sig[i]).mean(axis=1)
            if against.max() >= threshold:
                j = int(against.argmax())
                edges.add(members[[leaders[j]]], members[[i]], False, against[[j]].astype(np.float32))
            elif len(leaders) < limit:
                leaders.append(i)


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


def load_index(table: pa.Table | bytes, first_order: int, config: DedupConfig) -> pa.Table:
    """A persisted index file (its table, or its bytes) -> (order, hash, minhash, doc_key) rows with
    negative orders from `first_order` down (documents of earlier versions come before every new
    document)."""
    if isinstance(table, bytes):
        table = pa.ipc.open_file(io.BytesIO(table)).read_all()
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
