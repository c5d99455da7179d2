"""Dedup at scale, piece by piece: the exchange files on storage (local and S3), connected
components by star rounds over node partitions against a union-find, and large band buckets
compared against bounded representatives (a planted boilerplate cluster)."""

import random

import numpy as np
import pyarrow as pa
import pytest
from datagen import data_config, make_documents, near_copy, write_jsonl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.config.data import DedupConfig
from pipeline.data.components import both_ways, labels, large_star, small_star
from pipeline.data.dedup import bands, find_edges, key_rows
from pipeline.data.exchange import Exchange, Source, encode, read_partition, write_map
from pipeline.data.quarantine import read_rejects
from pipeline.data.stage import preprocess
from pipeline.data.summary import Reporter
from pipeline.storage import open_store


def test_exchange_round_trip_reads_each_partition_by_range(store_root):
    root, settings = store_root
    exchange = Exchange(root, settings, "tmp/run/keys", parts=5)
    tables = [pa.table({"x": np.arange(p * 10, p * 10 + p, dtype=np.int64)}) for p in range(5)]  # part 0 empty
    other = [pa.table({"x": np.array([100 + p], np.int64)}) for p in range(5)]
    keys = [write_map(exchange, 0, tables), write_map(exchange, 1, other), write_map(exchange, 2, [tables[0]] * 5)]
    assert keys[2] is None  # a writer with nothing to send writes no file; readers never ask for it
    written = (Source(exchange, (0, 1)),)
    assert sorted(open_store(root, settings).list("tmp/run/keys")) == [
        "tmp/run/keys/map-000000.bin",
        "tmp/run/keys/map-000001.bin",
    ]
    for p in range(5):
        got = read_partition(written, p)
        assert got["x"].to_pylist() == list(range(p * 10, p * 10 + p)) + [100 + p]  # map order kept
    assert read_partition((Source(exchange, ()),), 3) is None
    with pytest.raises(FileNotFoundError):  # a file reported written but gone is an error, never "empty"
        read_partition((Source(exchange, (0, 2)),), 1)
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
    edges = find_edges(rows, config)
    # All-pairs would be ~1.2 x 10^9 comparisons per band; with representatives each member is
    # compared with at most 64 leaders and gets one edge per giant bucket (bench/data_scale.py times
    # a planted cluster of 10^5 through the whole stage).
    assert edges.num_rows <= n * layout[0]
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


@pytest.mark.usefixtures("ray_local")
def test_refresh_names_the_published_documents_its_duplicates_match(tmp_path):
    """A refresh's duplicates of earlier versions are named from those versions' index files
    (`_name_old`), its duplicates of its own documents from their order (`Namer`)."""
    docs = make_documents(seed=3, n=60)
    write_jsonl(tmp_path / "src" / "part-0.jsonl", docs)
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "src"))
    preprocess(config, Reporter(quiet=True))
    fresh = make_documents(seed=4, n=2, prefix="fresh ")
    rng = random.Random(0)
    write_jsonl(tmp_path / "src" / "part-9.jsonl", [docs[0], near_copy(docs[1], rng), *fresh, near_copy(fresh[0], rng)])
    v2 = preprocess(config, Reporter(quiet=True))
    assert v2.stats.run.duplicates == {"exact": 1, "near": 2} and v2.stats.run.docs_kept == 2
    rows = read_rejects(open_store(config.storage.root), f"datasets/test/rejects/{v2.run_id}").to_pylist()
    by_line = {int(r["doc_key"].rsplit("|", 1)[1]): r for r in rows}
    assert by_line[0]["reason"] == "exact_duplicate" and by_line[0]["jaccard"] == 1.0
    assert by_line[0]["match_doc_key"].endswith("part-0.jsonl|0000000000")  # v1's document, from its index
    assert by_line[1]["reason"] == "near_duplicate" and 0.8 <= by_line[1]["jaccard"] < 1.0
    assert by_line[1]["match_doc_key"].endswith("part-0.jsonl|0000000001")
    assert by_line[4]["reason"] == "near_duplicate"
    assert by_line[4]["match_doc_key"].endswith("part-9.jsonl|0000000002")  # this run's, from its order
    assert not open_store(config.storage.root).list("datasets/test/tmp")
