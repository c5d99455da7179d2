"""Connected components of the duplicate graph, by tasks over node partitions (no task holds the
graph): the alternating large-star / small-star rounds of Kiveris et al., "Connected Components
in MapReduce and Beyond" (SoCC 2014), which converge in O(log n) rounds.

Edges are rows (node, other), stored in both directions or keyed by one end, hash-partitioned by
`node` (`node_parts`) into the files of an exchange (`exchange.py`); each round is one reduce per
partition, whose output is the next round's exchange:
- large-star: for each node a with neighbours G(a), m = min(G(a) + {a}); link every neighbour
  v > a to m. Changed when some a with a larger neighbour has m < a.
- small-star: for each node u with its smaller neighbours N(u), m = min(N(u) + {u}); link every
  v in N(u) + {u} other than m to m. Changed when some u has two or more smaller neighbours.
When a large-star and the small-star after it change nothing, the graph is a forest of stars
whose centres are their components' smallest nodes: every node's label is the smallest node it
is linked to, or itself. Memory per task is its partition's edges (a star of k leaves is k rows).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .blocks import split_by

EDGES = pa.schema([("node", pa.int64()), ("other", pa.int64())])
LABELS = pa.schema([("node", pa.int64()), ("label", pa.int64())])
MAX_ROUNDS = 64  # O(log n) are needed: 2^64 nodes would converge in fewer


def node_parts(nodes: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each node: a multiplicative hash (orders are structured: file << 34 | line)."""
    mixed = nodes.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(33)) % np.uint64(parts)).astype(np.int64)


def _keyed(node: np.ndarray, other: np.ndarray, parts: int) -> list[pa.Table]:
    table = pa.table([pa.array(node, pa.int64()), pa.array(other, pa.int64())], schema=EDGES)
    return split_by(table, node_parts(node, parts), parts)


def both_ways(u: np.ndarray, v: np.ndarray, parts: int) -> list[pa.Table]:
    """Edges (u, v) as rows keyed by each end: the input of a large-star round."""
    return _keyed(np.concatenate([u, v]), np.concatenate([v, u]), parts)


def _groups(table: pa.Table | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (node, other) pairs sorted by node then other, and where each node's run starts."""
    if table is None or not table.num_rows:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    node, other = table["node"].to_numpy(), table["other"].to_numpy()
    order = np.lexsort((other, node))  # two int64 keys: no row-view copies (np.unique(axis=0) makes ~5)
    node, other = node[order], other[order]
    distinct = np.r_[True, (node[1:] != node[:-1]) | (other[1:] != other[:-1])]
    node, other = node[distinct], other[distinct]
    starts = np.flatnonzero(np.r_[True, node[1:] != node[:-1]])
    return node, other, starts


def large_star(table: pa.Table | None, parts: int) -> tuple[list[pa.Table], int]:
    """One partition's large-star; its output rows are keyed by their larger end (small-star's input)."""
    node, other, starts = _groups(table)
    if not len(node):
        return _keyed(node, other, parts), 0
    smallest = np.minimum(node[starts], other[starts])  # others are sorted: the first is the least
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(node)]))
    larger = other > node
    changed = np.zeros(len(starts), bool)
    changed[group[larger]] = True
    changed &= smallest < node[starts]
    return _keyed(other[larger], smallest[group[larger]], parts), int(changed.sum())


def small_star(table: pa.Table | None, parts: int) -> tuple[list[pa.Table], int]:
    """One partition's small-star (rows (u, w) with w < u, keyed by u); output both ways."""
    node, other, starts = _groups(table)
    if not len(node):
        return both_ways(node, other, parts), 0
    sizes = np.diff(np.r_[starts, len(node)])
    smallest = other[starts]  # every w < u: the least of N(u) + {u} is the first w
    group = np.repeat(np.arange(len(starts)), sizes)
    rest = other != smallest[group]
    u = np.concatenate([other[rest], node[starts]])
    v = np.concatenate([smallest[group[rest]], smallest])
    return both_ways(u, v, parts), int((sizes > 1).sum())


def labels(table: pa.Table | None) -> pa.Table:
    """After convergence: each node of the partition and its component's smallest node."""
    node, other, starts = _groups(table)
    if not len(node):
        return LABELS.empty_table()
    smallest = np.minimum(node[starts], other[starts])
    return pa.table([pa.array(node[starts]), pa.array(smallest)], schema=LABELS)


def components(edges, exchange_for, parts: int):
    """Run rounds from `edges` (a `blocks.Written` of rows keyed both ways) until nothing changes;
    `exchange_for(name)` names each round's exchange. Returns the last round's `Written` (read
    it with `labels`) and the number of rounds."""
    current = edges
    for round_ in range(MAX_ROUNDS):
        large = current.reduce_into(large_star, exchange_for(f"large-{round_}"), parts)
        small = large.reduce_into(small_star, exchange_for(f"small-{round_}"), parts)
        current = small
        if sum(large.extras) + sum(small.extras) == 0:
            return current, round_ + 1
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} rounds")
