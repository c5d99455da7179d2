"""Dedup at scale, piece by piece: the exchange files on storage (local and S3), connected
components by star rounds over node partitions against a union-find, and large band buckets
compared against bounded representatives (a planted boilerplate cluster)."""

import time

import numpy as np
import pyarrow as pa
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.config.data import DedupConfig
from pipeline.data.components import both_ways, labels, large_star, small_star
from pipeline.data.dedup import bands, find_edges, key_rows
from pipeline.data.exchange import Exchange, encode, read_partition, write_map
from pipeline.storage import open_store


def test_exchange_round_trip_reads_each_partition_by_range(store_root):
    root, settings = store_root
    exchange = Exchange(root, settings, "tmp/run/keys", parts=5)
    tables = [pa.table({"x": np.arange(p * 10, p * 10 + p, dtype=np.int64)}) for p in range(5)]  # part 0 empty
    other = [pa.table({"x": np.array([100 + p], np.int64)}) for p in range(5)]
    keys = [write_map(exchange, 0, tables), write_map(exchange, 1, other), write_map(exchange, 2, [tables[0]] * 5)]
    assert keys[2] is None  # a writer with nothing to send writes no file (a reader skips it)
    assert sorted(open_store(root, settings).list("tmp/run/keys")) == [
        "tmp/run/keys/map-000000.bin",
        "tmp/run/keys/map-000001.bin",
    ]
    for p in range(5):
        got = read_partition(exchange, 3, p)
        assert got["x"].to_pylist() == list(range(p * 10, p * 10 + p)) + [100 + p]  # map order kept
    assert read_partition(Exchange(root, settings, "tmp/run/none", parts=5), 2, 3) is None
    with pytest.raises(ValueError, match="partitions"):
        encode([]) and write_map(exchange, 3, tables[:2])


def _simulate(u: np.ndarray, v: np.ndarray, parts: int) -> tuple[dict[int, int], int]:
    """Star rounds as the stage runs them, with each exchange done in memory."""

    def exchange(outputs: list[list[pa.Table]]) -> list[pa.Table | None]:
        merged = []
        for p in range(parts):
            tables = [out[p] for out in outputs if out[p].num_rows]
            merged.append(pa.concat_tables(tables) if tables else None)
        return merged

    current = exchange([both_ways(u, v, parts)])
    for round_ in range(64):
        large = [large_star(t, parts) for t in current]
        small = [small_star(t, parts) for t in exchange([out for out, _ in large])]
        current = exchange([out for out, _ in small])
        if sum(c for _, c in large) + sum(c for _, c in small) == 0:
            found = pa.concat_tables([labels(t) for t in current])
            return dict(zip(found["node"].to_pylist(), found["label"].to_pylist(), strict=True)), round_ + 1
    raise AssertionError("no convergence")


def _union_find_labels(u: np.ndarray, v: np.ndarray) -> dict[int, int]:
    nodes, index = np.unique(np.concatenate([u, v]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(u)), (index[: len(u)], index[len(u) :])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(smallest, component, nodes)
    return dict(zip(nodes.tolist(), smallest[component].tolist(), strict=True))


@pytest.mark.parametrize("parts", [1, 3, 8])
def test_star_rounds_find_the_components_of_a_union_find(parts):
    rng = np.random.default_rng(parts)
    chain = np.arange(0, 400, dtype=np.int64)  # a long path: the worst case for label propagation
    u = [chain[:-1], rng.integers(-50, 5000, 3000)]  # negative nodes: documents of earlier versions
    v = [chain[1:], rng.integers(-50, 5000, 3000)]
    star = rng.permutation(np.arange(6000, 7000))  # one big cluster, linked in random order
    u.append(star[:-1])
    v.append(star[1:])
    u, v = np.concatenate(u), np.concatenate(v)
    keep = u != v
    found, rounds = _simulate(u[keep], v[keep], parts)
    assert found == _union_find_labels(u[keep], v[keep])
    assert rounds <= 20  # O(log n), here n = 10^4


def _cluster_rows(n: int, config: DedupConfig, layout, seed: int = 0) -> tuple[pa.Table, set[int]]:
    """Key rows of `n` near-identical documents: the first's signature with ~5 % of positions
    redrawn in each other (pairwise similarity ~0.9, above the 0.8 threshold); and the documents
    LSH can find at all (those with a band left intact: the others share no key with anyone)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**32, config.num_perm, dtype=np.uint32)
    signatures = np.tile(base, (n, 1))
    flip = rng.random((n, config.num_perm)) < 0.05
    flip[0] = False
    b, r = layout
    findable = set(np.flatnonzero((~flip[:, : b * r].reshape(n, b, r).any(axis=2)).any(axis=1)).tolist())
    signatures[flip] = rng.integers(0, 2**32, int(flip.sum()), dtype=np.uint32)
    hashes = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    table = pa.table(
        {
            "order": pa.array(np.arange(n, dtype=np.int64)),
            "hash": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(hashes.tobytes())]),
            "minhash": pa.FixedSizeListArray.from_arrays(pa.array(signatures.reshape(-1)), config.num_perm),
        }
    )
    return key_rows(table, config, layout), findable


def test_boilerplate_cluster_is_compared_with_bounded_representatives():
    config = DedupConfig()
    layout = bands(config.threshold, config.num_perm)
    n = 50_000  # bench/data_scale.py plants 10^5 in a whole stage run
    rows, findable = _cluster_rows(n, config, layout)
    started = time.perf_counter()
    edges = find_edges(rows, config)
    elapsed = time.perf_counter() - started
    # All-pairs would be ~5 x 10^9 comparisons per band; with representatives the edges are one
    # per member per giant bucket and the time is seconds.
    assert edges.num_rows <= n * layout[0]
    assert elapsed < 60, elapsed
    found, _ = _simulate(edges["u"].to_numpy(), edges["v"].to_numpy(), parts=4)
    assert set(found) == findable and set(found.values()) == {0}  # one cluster, the first document kept
    assert len(findable) > 0.99 * n


def test_representatives_find_the_same_clusters_as_all_pairs_on_a_smaller_cluster():
    config = DedupConfig()
    layout = bands(config.threshold, config.num_perm)
    rows, findable = _cluster_rows(800, config, layout, seed=1)
    bounded = find_edges(rows, config)
    every_pair = find_edges(rows, config, representatives=10**9)
    assert every_pair.num_rows > 10 * bounded.num_rows  # far fewer comparisons and edges
    for edges in (bounded, every_pair):
        found, _ = _simulate(edges["u"].to_numpy(), edges["v"].to_numpy(), parts=2)
        assert set(found) == findable and set(found.values()) == {0}
