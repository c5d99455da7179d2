"""Suites from held-out documents: deterministic bytes, disjoint from training documents (by document
hash), lm-eval YAML that names local files after materializing, and one clear line per bad input."""

import json
import re

import numpy as np
import pytest
import yaml
from evalgen import CLASSES, RARE, eval_config

from pipeline.data.shards import read_shard, write_shard
from pipeline.data.tokenizer_step import load_stored_tokenizer
from pipeline.errors import UserError
from pipeline.records import Manifest
from pipeline.storage import open_store
from pipeline.suites.build import build_suites, materialize_suites, suites_prefix
from pipeline.suites.heldout import doc_hash, read_heldout


def stored_files(store, prefix):
    return {key: store.read(key) for key in store.list(prefix)}


def trained_documents(store, manifest):
    """Every document of the train and val shards, decoded back from their token blocks.

    A pack group's token stream (documents joined by EOS) may span several shard parts
    (`part-<group>-<k>.arrow`), so parts of one group are concatenated before splitting at EOS.
    """
    tokenizer = load_stored_tokenizer(store, manifest.tokenizer)
    eos = manifest.tokenizer.eos_id
    groups = {}
    for split in ("train", "val"):
        for entry in sorted(manifest.split(split), key=lambda e: e.key):
            group = re.sub(r"(part-\d+)-\d+\.arrow$", r"\1.arrow", entry.key)
            table = read_shard(store, entry)
            blocks = np.stack(table.column("input_ids").to_numpy(zero_copy_only=False))
            valid = table.column("valid").to_numpy()
            groups.setdefault(group, []).extend(row[:n] for row, n in zip(blocks, valid, strict=True))
    texts = []
    for rows in groups.values():
        stream = np.concatenate(rows)
        for piece in np.split(stream, np.flatnonzero(stream == eos)):
            ids = [int(t) for t in piece if t != eos]
            if ids:
                texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts


@pytest.mark.distributed  # the real data stage on a Ray local cluster
def test_deterministic_and_disjoint_from_training(labelled_dataset):
    config, store, manifest, corpus = labelled_dataset
    index = build_suites(store, manifest, config.eval)
    prefix = index.prefix
    first = stored_files(store, prefix)
    assert set(first) == {f"{prefix}/{name}" for name in index.files} | {f"{prefix}/suites.json"}

    # A second call reuses the index without writing; a rebuild from nothing gives identical bytes.
    assert build_suites(store, manifest, config.eval) == index
    for key in first:
        store.delete(key)
    assert build_suites(store, manifest, config.eval) == index
    assert stored_files(store, prefix) == first

    # Listing order does not matter: held-out shards read in reverse give the same documents.
    shards = {**manifest.shards, "heldout": manifest.shards["heldout"][::-1]}
    reversed_manifest = manifest.model_copy(update={"shards": shards})
    assert read_heldout(store, reversed_manifest) == read_heldout(store, manifest)

    # Disjoint from training by document hash: decode every train/val document back from its tokens.
    trained = trained_documents(store, manifest)
    corpus_hashes = {doc_hash(d["text"]) for d in corpus}
    trained_hashes = {doc_hash(t) for t in trained}
    assert trained_hashes <= corpus_hashes  # decoding is exact, so the hashes are real document hashes
    heldout_hashes = {d.doc_hash for d in read_heldout(store, manifest)}
    assert len(trained_hashes) + len(heldout_hashes) == len(corpus_hashes)
    tasks = index.tasks
    used = {h for task in tasks.values() for hashes in task.doc_hashes.values() for h in hashes}
    assert used and used <= heldout_hashes and not used & trained_hashes

    # classify: every document feeds one split; test examples only from held-out documents.
    classify = tasks["sora_classify"]
    splits = {s: set(h) for s, h in classify.doc_hashes.items()}
    assert not (splits["train"] & splits["test"] or splits["train"] & splits["validation"])
    assert not splits["validation"] & splits["test"]
    info = classify.model_extra  # the classify builder's own bookkeeping (dropped labels, examples)
    assert classify.classes == sorted(CLASSES) and RARE in info["dropped_labels"]
    assert classify.chance.uniform == 0.25
    assert classify.chance.majority == max(info["examples"]["test"].values()) / classify.counts["test"]
    assert classify.counts["test"] >= config.eval.suites.min_test_examples
    rows = [json.loads(line) for line in store.read(f"{prefix}/classify/test.jsonl").decode().splitlines()]
    assert {r["label"] for r in rows} == set(CLASSES)
    assert all(classify.classes[r["label_id"]] == r["label"] for r in rows)
    assert all(len(r["text"]) <= config.eval.suites.classify_snippet_chars for r in rows)

    cloze = [json.loads(line) for line in store.read(f"{prefix}/cloze/test.jsonl").decode().splitlines()]
    assert len(cloze) == tasks["sora_cloze"].counts["test"] >= config.eval.suites.min_test_examples
    for row in cloze:
        assert len(row["endings"]) == 4 and len(set(row["endings"])) == 4
        assert {len(e) for e in row["endings"]} == {config.eval.suites.cloze_ending_chars}
    assert tasks["sora_cloze"].chance.uniform == 0.25


def test_materialized_yaml_names_local_files(small_dataset, tmp_path):
    config, store, manifest, _ = small_dataset
    index = build_suites(store, manifest, config.eval)
    local = materialize_suites(store, manifest, tmp_path / "suites", config.eval)
    spec = yaml.safe_load((local / "classify" / "sora_classify.yaml").read_text())
    assert spec["task"] == "sora_classify" and spec["tag"] == ["sora_suites"]
    assert spec["doc_to_choice"] == index.tasks["sora_classify"].classes
    for split, path in spec["dataset_kwargs"]["data_files"].items():
        assert path == str(local / "classify" / f"{split}.jsonl")
        assert (local / "classify" / f"{split}.jsonl").read_bytes() == store.read(
            f"{index.prefix}/classify/{split}.jsonl"
        )
    stored = yaml.safe_load(store.read(f"{index.prefix}/classify/sora_classify.yaml"))
    assert stored["dataset_kwargs"]["data_files"]["test"] == "classify/test.jsonl"  # relative on the store


def heldout_manifest(store, rows, name="bad"):
    """A manifest whose held-out split is one shard written with the data stage's writer."""
    import pyarrow as pa

    table = pa.table(
        {
            "doc_key": pa.array([f"d{i}#0" for i in range(len(rows))], pa.string()),
            "label": pa.array([label for label, _ in rows], pa.string()),
            "text": pa.array([text for _, text in rows], pa.string()),
        }
    )
    entries = [
        {**write_shard(store, f"datasets/{name}/shards/r/heldout/part-00000.arrow", table, 0), "docs": len(rows)}
    ]
    tokenizer = {"uri": "", "key": "", "sha256": "0" * 64, "vocab_size": 300, "eos_id": 0, "pad_id": 1}
    return Manifest.from_dict(
        {
            "dataset": name,
            "version": 1,
            "seq_len": 8,
            "dtype": "uint16",
            "tokenizer": tokenizer,
            "shards": {"train": [], "val": [], "heldout": entries if rows else []},
        }
    )


def lines(i, n=14):
    return "".join(f"    line {k} of document {i} says {'xyz' * (k % 3 + 1)} {i * k}\n" for k in range(n))


@pytest.mark.parametrize(
    "rows, overrides, message",
    [
        ([], {}, r"has no held-out documents: raise data\.split\.heldout_fraction"),
        (
            [("a", lines(i)) for i in range(12)],
            {"enabled": ["cloze"]},
            r"too small for cloze: \d+ examples from 12 held-out documents, need at least 30 .*heldout_fraction",
        ),
        (
            [(None, lines(i)) for i in range(12)],
            {"enabled": ["classify"]},
            r"carry no label: set data\.sources\[\]\.label_field",
        ),
        (
            [("a", lines(i)) for i in range(12)] + [("b", lines(i + 50)) for i in range(2)],
            {"enabled": ["classify"]},
            r"at least 2 classes .* found 1 among 2 labels \(a: 12, b: 2\)",
        ),
        (
            [("a", lines(i)) for i in range(6)] + [("b", lines(i + 50)) for i in range(6)],
            {"enabled": ["classify"]},
            r"too small for classify: \d+ test examples from 4 test documents .* need at least 30: "
            r"raise data\.split\.heldout_fraction",
        ),
    ],
    ids=["no-heldout", "cloze-too-small", "no-labels", "one-class", "classify-too-small"],
)
def test_bad_input_one_clear_line_nothing_written(tmp_path, rows, overrides, message):
    store = open_store(str(tmp_path / "store"))
    manifest = heldout_manifest(store, rows)
    config = eval_config(**overrides)
    with pytest.raises(UserError, match=message) as error:
        build_suites(store, manifest, config)
    assert "\n" not in str(error.value)
    assert store.list(suites_prefix(manifest, config.suites)) == []


def sharded_heldout_manifest(store, rows, per_shard, name="big"):
    """A manifest whose held-out split is `rows` written `per_shard` documents to a shard."""
    import pyarrow as pa

    entries = []
    for start in range(0, len(rows), per_shard):
        part = rows[start : start + per_shard]
        table = pa.table(
            {
                "doc_key": pa.array([f"d{start + i}#0" for i in range(len(part))], pa.string()),
                "label": pa.array([label for label, _ in part], pa.string()),
                "text": pa.array([text for _, text in part], pa.string()),
            }
        )
        key = f"datasets/{name}/shards/r/heldout/part-{start:05d}.arrow"
        entries.append({**write_shard(store, key, table, 0), "docs": len(part)})
    raw = heldout_manifest(store, [], f"{name}-empty").to_dict()  # the same fields, held-out split aside
    return Manifest.from_dict({**raw, "dataset": name, "shards": {**raw["shards"], "heldout": entries}})


def test_building_streams_the_heldout_split(tmp_path):
    # Four times the held-out documents add their hashes to what the builder holds, not their text:
    # it reads one shard at a time and keeps only the capped suites (Python heap, traced). Eight
    # snippets a document fill the classify caps at 1x already, so the difference is per document.
    import tracemalloc

    peaks, text = {}, {}
    for scale in (1, 4):
        store = open_store(str(tmp_path / f"x{scale}"))
        rows = [("abcd"[i % 4], lines(i, 200)) for i in range(150 * scale)]
        manifest = sharded_heldout_manifest(store, rows, per_shard=100)
        text[scale] = sum(len(t) for _, t in rows)
        tracemalloc.start()
        index = build_suites(store, manifest, eval_config(classify_snippets_per_doc=8))
        peaks[scale] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert index.heldout_docs == len(rows)
    added = text[4] - text[1]
    print(
        f"held-out text {text[1] / 2**20:.1f} -> {text[4] / 2**20:.1f} MiB: builder peak "
        f"{peaks[1] / 2**20:.2f} -> {peaks[4] / 2**20:.2f} MiB"
    )
    assert peaks[4] - peaks[1] < added / 10
