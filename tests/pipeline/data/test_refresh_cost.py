"""What a refresh reads (issue 19): LATEST, its manifest and that version's one source index (plus
the tokenizer when it builds), however many versions were published before and however many source
files the corpus has; and a parent written before the source index (JSON `sources`) still diffs
exactly. Reads are counted in the driver (the store's `read` and `read_with_etag`); the lease's own
reads (heartbeat timing) and the local back end's reads inside a compare-and-swap (on S3 the swap is
one conditional PUT) are left out."""

import json
import threading

import pytest
from datagen import N_UNIQUE, data_config, make_documents, write_jsonl

from pipeline.data.stage import preprocess
from pipeline.data.summary import Reporter
from pipeline.keys import DatasetKeys
from pipeline.records import read_latest, read_source_index, read_version, source_entries
from pipeline.storage import open_store
from pipeline.storage.local import LocalStore

pytestmark = pytest.mark.usefixtures("ray_local")

FILES = 120  # source files of the first version, 2 documents each


def run(config):
    return preprocess(config, Reporter(quiet=True))


@pytest.fixture
def driver_reads(monkeypatch):
    """Keys the driver reads from a local store, in order (the lease's and a swap's own left out)."""
    keys: list[str] = []
    swapping = threading.local()
    for method in ("read", "read_with_etag"):
        original = getattr(LocalStore, method)

        def counted(self, key, *args, _original=original, **kwargs):
            if not key.endswith("/_lease") and not getattr(swapping, "on", False):
                keys.append(key)
            return _original(self, key, *args, **kwargs)

        monkeypatch.setattr(LocalStore, method, counted)
    swap = LocalStore.swap

    def swap_uncounted(self, *args, **kwargs):
        swapping.on = True
        try:
            return swap(self, *args, **kwargs)
        finally:
            swapping.on = False

    monkeypatch.setattr(LocalStore, "swap", swap_uncounted)
    return keys


def test_refresh_reads_do_not_grow_with_published_versions_or_source_files(tmp_path, driver_reads):
    corpus = tmp_path / "corpus"
    docs = make_documents(n=2 * FILES)
    for i in range(FILES):
        write_jsonl(corpus / f"f{i:03d}.jsonl", docs[2 * i : 2 * i + 2])
    config = data_config(f"file://{tmp_path}/root", str(corpus))
    store, keys = open_store(config.storage.root), DatasetKeys("test")
    parent = run(config)

    measured = {}
    for published in range(1, 9):
        write_jsonl(corpus / f"new-{published}.jsonl", make_documents(seed=100 + published, n=3, prefix="new "))
        driver_reads.clear()
        manifest = run(config)
        assert manifest.version == published + 1 and manifest.stats.run.docs_read == 3
        expected = [keys.latest, keys.manifest(published), parent.source_index, parent.tokenizer.key]
        assert sorted(driver_reads) == sorted(expected), published
        if published in (1, 4, 8):
            refresh = len(driver_reads)
            driver_reads.clear()
            assert run(config) == manifest  # nothing new: LATEST, its manifest, its source index
            measured[published] = (refresh, len(driver_reads))
            # Not a driver read: the dedup tasks read every published run's index files (issue 19's dedup side).
            print(f"v{manifest.version}: dedup index files read by the next refresh: {len(manifest.dedup_index)}")
            assert sorted(driver_reads) == sorted([keys.latest, keys.manifest(manifest.version), manifest.source_index])
        parent = manifest
    print(f"driver reads (refresh, no-op refresh) after 1/4/8 published versions: {measured}")
    assert measured == {1: (4, 3), 4: (4, 3), 8: (4, 3)}

    assert "sources" not in json.loads(store.read(parent.key))  # the files are in the index only
    index = read_source_index(store, parent)
    assert index.num_rows == FILES + 8 and index["uri"].to_pylist() == sorted(index["uri"].to_pylist())
    assert parent.published == [(1, 9)]
    driver_reads.clear()
    assert read_version(store, "test", 2).version == 2 and len(driver_reads) == 3


def test_a_parent_written_before_the_source_index_refreshes_exactly(tmp_path, corpus):
    config = data_config(f"file://{tmp_path}/root", str(corpus["dir"]))
    v1 = run(config)
    store = open_store(config.storage.root)
    # v1 as published before the source index: its files as JSON `sources`, no index, no `published`.
    legacy = json.loads(store.read(v1.key))
    legacy["sources"] = [entry.to_dict() for entry in source_entries(store, v1)]
    del legacy["source_index"], legacy["published"]
    legacy["schema_version"] = 1
    store.write(v1.key, json.dumps(legacy).encode())
    store.delete(v1.source_index)
    assert len(legacy["sources"]) == 4
    assert run(config).version == 1  # unchanged files: no new version

    write_jsonl(corpus["dir"] / "part-4.jsonl", make_documents(seed=7, n=30, prefix="new "))  # new
    with open(corpus["dir"] / "part-0.jsonl", "a") as handle:  # changed: re-read whole
        handle.write('{"text": "a brand new line in an old file, long enough"}\n')
    v2 = run(config)
    old_lines = N_UNIQUE // 3
    assert v2.version == 2 and v2.stats.run.docs_read == 30 + old_lines + 1
    assert v2.stats.run.duplicates["exact"] == old_lines and v2.stats.run.docs_kept == 31
    assert v2.published == [(1, 2)] and read_source_index(store, v2).num_rows == 5
    assert run(config).version == 2  # and the next refresh diffs against v2's index
    assert read_version(store, "test", 1).source_index is None
    assert read_latest(store, "test")[0] == v2
