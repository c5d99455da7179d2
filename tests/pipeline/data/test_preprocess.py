"""Data stage end to end on a generated corpus: shards on file:// and s3://, dedup, packing, split,
refresh. (Determinism across runs and block counts: test_scale.py.)"""

import json

import boto3
import numpy as np
import pytest
from datagen import EXACT_DUPLICATES, N_UNIQUE, NEAR_DUPLICATES, data_config, make_documents, write_jsonl

from pipeline.data import minhash
from pipeline.data.shards import CorruptShardError, read_shard
from pipeline.data.stage import preprocess
from pipeline.data.steps import content_hash
from pipeline.data.summary import Reporter
from pipeline.data.tokenize_pack import assign_split
from pipeline.data.tokenizer_step import load_stored_tokenizer
from pipeline.errors import UserError
from pipeline.records import read_latest, read_version
from pipeline.storage import open_store

pytestmark = pytest.mark.usefixtures("ray_local")


def run(config):
    return preprocess(config, Reporter(quiet=True))


def upload_dir(directory, bucket, prefix, endpoint):
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in sorted(directory.iterdir()):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def test_shards_on_store_read_back_verified(store_root, corpus):
    uri, settings = store_root
    source = str(corpus["dir"])
    if uri.startswith("s3://"):  # the corpus itself on object storage too
        bucket = uri.split("/")[2]
        upload_dir(corpus["dir"], bucket, "corpus", settings.endpoint_url)
        source = f"s3://{bucket}/corpus/*.jsonl"
    manifest = run(data_config(uri, source, settings=settings))
    store = open_store(uri, settings)
    assert read_version(store, "test") == manifest and manifest.version == 1

    stats = manifest.stats.run
    assert stats.docs_read == N_UNIQUE + EXACT_DUPLICATES + NEAR_DUPLICATES
    assert stats.duplicates == {"exact": EXACT_DUPLICATES, "near": NEAR_DUPLICATES}
    assert stats.docs_kept == N_UNIQUE
    assert len(manifest.shards["train"]) >= 2 and manifest.shards["val"]

    for split in ("train", "val"):
        for entry in manifest.shards[split]:
            assert entry.uri.startswith(uri)
            table = read_shard(store, entry)  # verifies sha256
            assert table.num_rows == entry.rows
            assert str(table.schema.field("input_ids").type) == "fixed_size_list<item: uint16>[33]"
            assert int(np.asarray(table.column("valid")).sum()) == entry.tokens
    entry = manifest.shards["train"][0]
    data = bytearray(store.read(entry.key))
    data[len(data) // 2] ^= 0xFF
    store.write(entry.key, bytes(data))
    with pytest.raises(CorruptShardError, match="corrupt"):
        read_shard(store, entry)


def test_packing_keeps_every_token_once_and_split_is_by_content(tmp_path, corpus):
    config = data_config(f"file://{tmp_path}/root", str(corpus["dir"]))
    manifest = run(config)
    store = open_store(config.storage.root)
    tokenizer = load_stored_tokenizer(store, manifest.tokenizer)
    eos = manifest.tokenizer.eos_id
    for split in ("train", "val"):
        expected = sorted(
            tuple(tokenizer.encode(doc, add_special_tokens=False).ids)
            for doc in corpus["docs"]
            if assign_split(content_hash(doc), config.data) == split
        )
        stream = []
        for entry in manifest.shards[split]:
            table = read_shard(store, entry)
            for ids, valid in zip(
                table.column("input_ids").to_pylist(), table.column("valid").to_pylist(), strict=True
            ):
                stream.extend(ids[:valid])
        documents, current = [], []
        for token in stream:
            if token == eos:
                documents.append(tuple(current))
                current = []
            else:
                current.append(token)
        assert current == []  # every document ends with EOS, nothing is cut off
        assert sorted(documents) == expected, split
    heldout = [read_shard(store, e) for e in manifest.shards["heldout"]]
    texts = [t for table in heldout for t in table.column("text").to_pylist()]
    assert texts and all(assign_split(content_hash(t), config.data) == "heldout" for t in texts)


def test_dataset_of_an_older_minhash_scheme_stays_current_and_refuses_only_new_documents(tmp_path, corpus):
    config = data_config(f"file://{tmp_path}/root", str(corpus["dir"]))
    v1 = run(config)
    store = open_store(config.storage.root)
    key = "datasets/test/manifests/v000001.json"
    legacy = json.loads(store.read(key))
    assert legacy.pop("dedup_scheme") == minhash.SCHEME and legacy["dedup_index"]
    store.write(key, json.dumps(legacy).encode())  # as published before schemes were recorded

    assert run(config).version == v1.version  # nothing new: no comparison, no error
    write_jsonl(corpus["dir"] / "part-4.jsonl", make_documents(seed=7, n=5, prefix="new "))
    with pytest.raises(UserError, match=r"v1 was deduplicated with MinHash scheme 'minhash-sha1-.*new dataset name"):
        run(config)
    assert store.list("datasets/test/manifests") == [key]  # nothing half-written


def test_refresh_appends_only_new_data(tmp_path, corpus):
    config = data_config(f"file://{tmp_path}/root", str(corpus["dir"]))
    v1 = run(config)
    assert run(config) == v1  # no changes: no new version
    store = open_store(config.storage.root)
    assert store.list("datasets/test/manifests") == ["datasets/test/manifests/v000001.json"]

    new_docs = make_documents(seed=7, n=30, prefix="new ")
    write_jsonl(corpus["dir"] / "part-4.jsonl", new_docs + [corpus["docs"][0]])  # + an old document
    v2 = run(config)
    assert v2.version == 2 and v2.parent_version == 1
    assert v2.stats.run.docs_read == 31
    assert v2.stats.run.duplicates["exact"] == 1  # deduplicated against the published v1
    assert v2.stats.run.docs_kept == 30
    assert v2.stats.total.docs_kept == N_UNIQUE + 30
    assert v2.tokenizer == v1.tokenizer
    for split in ("train", "val", "heldout"):
        old_keys = [e.key for e in v1.split(split)]
        assert [e.key for e in v2.split(split)][: len(old_keys)] == old_keys
    new_keys = {e.key for s in ("train", "val", "heldout") for e in v2.split(s)} - {
        e.key for s in ("train", "val", "heldout") for e in v1.split(s)
    }
    assert new_keys and all(v2.run_id in key for key in new_keys)

    # A changed file is re-read; its old lines are exact duplicates of what is published.
    with open(corpus["dir"] / "part-0.jsonl", "a") as handle:
        handle.write('{"text": "a brand new line in an old file, long enough"}\n')
    v3 = run(config)
    old_lines = N_UNIQUE // 3
    assert v3.stats.run.docs_read == old_lines + 1
    assert v3.stats.run.duplicates["exact"] == old_lines
    assert v3.stats.run.docs_kept == 1
    latest, _ = read_latest(store, "test")
    assert latest.version == 3
