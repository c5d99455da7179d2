"""Data stage at scale: output independent of the number of read blocks (and byte-identical to the
pre-scaling implementation), a large jsonl file read by several tasks, near-duplicate rejects that
name their match."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
from datagen import EXACT_DUPLICATES, NEAR_DUPLICATES, data_config, make_documents

from pipeline.data.exchange import Scratch
from pipeline.data.plan import plan_pieces
from pipeline.data.quarantine import read_rejects
from pipeline.data.read_stage import read_records
from pipeline.data.stage import preprocess
from pipeline.data.summary import Reporter
from pipeline.storage import open_store

pytestmark = pytest.mark.usefixtures("ray_local")

# reference_outputs.json: what the implementation before issue 10 (one read task per file,
# driver-side dedup) produced on `make_corpus` with `data_config`: train/val shard sha256s, the
# tokenizer and the stats. (Heldout shards and rejects hold paths of the temporary corpus.)
REFERENCE = Path(__file__).parent / "reference_outputs.json"


def _outputs(manifest, store):
    rows = read_rejects(store, f"datasets/{manifest.dataset}/rejects/{manifest.run_id}").to_pylist()
    assert not store.list(f"datasets/{manifest.dataset}/tmp")  # the exchange files are gone
    heldout = [store.read(e.key) for e in manifest.split("heldout")]
    return {
        "shards": {s: [e.sha256 for e in manifest.split(s)] for s in ("train", "val")},
        "heldout": heldout,
        "tokenizer": manifest.tokenizer.sha256,
        "stats": manifest.stats.to_dict(),
        "rejects": rows,
    }


def test_output_is_independent_of_block_count(tmp_path, corpus):
    outputs, run_ids = [], set()
    for blocks in (1, 2, 8):
        config = data_config(f"file://{tmp_path}/root-{blocks}", str(corpus["dir"]), read_blocks=blocks)
        manifest = preprocess(config, Reporter(quiet=True))
        outputs.append(_outputs(manifest, open_store(config.storage.root)))
        run_ids.add(manifest.run_id)
    assert len(run_ids) == 3  # three separate runs, one output
    assert outputs[0] == outputs[1] == outputs[2]
    stats = outputs[0]["stats"]["run"]
    assert stats["duplicates"] == {"exact": EXACT_DUPLICATES, "near": NEAR_DUPLICATES}
    reference = json.loads(REFERENCE.read_text())
    assert outputs[0]["shards"] == reference["shards"]
    assert outputs[0]["tokenizer"] == reference["tokenizer"]
    # The filter chain's counters are new since the reference (the config's mapping form is the
    # length filter alone); the rest is unchanged.
    counters = {part: outputs[0]["stats"][part].pop("filters") for part in ("run", "total")}
    assert outputs[0]["stats"] == reference["stats"]
    read = reference["stats"]["run"]["docs_read"]
    assert counters["run"] == counters["total"] == {"length/checked": read}

    # Every duplicate is quarantined, naming the kept document it matched.
    docs = corpus["docs"]
    dups = [r for r in outputs[0]["rejects"] if r["reason"] in ("exact_duplicate", "near_duplicate")]
    assert (
        sorted(r["reason"] for r in dups)
        == ["exact_duplicate"] * EXACT_DUPLICATES + ["near_duplicate"] * NEAR_DUPLICATES
    )
    third = len(docs) // 3
    for row in dups:
        assert row["unit"].endswith("part-3.jsonl") and row["match_doc_key"]
        part, line = row["match_doc_key"].split("|")[1], int(row["match_doc_key"].split("|")[2])
        original = docs[int(part.rsplit("part-", 1)[1].split(".")[0]) * third + line]
        if row["reason"] == "exact_duplicate":
            assert row["text"] == original and row["jaccard"] == 1.0
        else:
            assert row["text"] != original and 0.8 <= row["jaccard"] < 1.0
            assert len(set(row["text"].split()) ^ set(original.split())) <= 2  # one word changed


def test_large_jsonl_file_is_read_by_several_tasks(tmp_path):
    docs = make_documents(n=300)
    lines = [json.dumps({"text": d}).encode() for d in docs]
    lines[17] = b'{"text": "broken'  # malformed lines anywhere, including near range boundaries
    lines[150] = b"\xff\xfe not utf-8"
    body = b"\n".join(lines) + b"\n"
    copies = (50 << 20) // len(body) + 1
    path = tmp_path / "src" / "big.jsonl"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        for _ in range(copies):
            handle.write(body)
            handle.write(b"\n")  # a blank line between copies: numbering counts it
    config = data_config(f"file://{tmp_path}/root", str(path), dedup={"near": False})
    from pipeline.data.sources import list_all_units

    settings = config.storage.settings()
    units = list_all_units(config.data.sources, settings)
    assert units[0].size >= 50 << 20
    pieces, _ = plan_pieces(units, 4, settings)
    assert len(pieces) == 4  # one 50 MB file, four read tasks

    def keyed(blocks):
        records, counts = read_records(
            units, config.data, settings, blocks, Scratch(config.storage.root, settings, f"tmp/{blocks}")
        )
        table = pa.concat_tables(records.tables()).select(["doc_key", "reject", "hash"])
        return table.sort_by("doc_key"), counts

    split, counts = keyed(4)
    assert counts.docs_read == copies * len(lines)
    assert counts.rejected == {"malformed_json": copies, "invalid_utf8": copies}
    assert split.equals(keyed(1)[0])  # the same records, numbered the same, as one whole-file read
    last = split["doc_key"][-1].as_py()
    assert last.endswith(f"|{copies * (len(lines) + 1) - 2:010d}")


def test_dedup_shuffle_partitions_follow_the_corpus_size():
    from pipeline.config.data import DataConfig, DedupConfig
    from pipeline.data.dedup_stage import shuffle_partitions

    config, layout = DedupConfig(), (9, 13)  # the default threshold's LSH layout
    target = int(DataConfig().shuffle_partition_bytes)
    assert shuffle_partitions(1_790, config, layout, 6, 2, target) == 6  # small: one per block
    assert shuffle_partitions(1_790, config, layout, 50, 2, target) == 8  # at most 4 per core
    docs = 1_000_000_000
    parts = shuffle_partitions(docs, config, layout, 6, 2, target)
    rows_per_doc, row_bytes = 1 + layout[0], 53 + 8 + 16 + 4 * config.num_perm
    assert docs * rows_per_doc * row_bytes / parts <= target  # no reduce task outgrows its worker
    exact_only = shuffle_partitions(docs, DedupConfig(near=False), layout, 6, 2, target)
    assert exact_only < parts / 10  # one 41-byte row per document without near-dedup


def test_every_record_is_routed_to_the_block_that_holds_it(tmp_path):
    """The removed-documents table is split by `BlockRouter` so each block's tasks get only their
    own rows: every order must map to its block, also across byte ranges of a split file."""
    docs = make_documents(n=300)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs * 4))  # split
    (source / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:20]))  # whole
    config = data_config(f"file://{tmp_path}/root", str(source))
    from pipeline.data.sources import list_all_units

    settings = config.storage.settings()
    units = list_all_units(config.data.sources, settings)
    records, _ = read_records(units, config.data, settings, 5, Scratch(config.storage.root, settings, "tmp"))
    tables = records.tables()
    assert len(tables) >= 4 and sum(t.num_rows for t in tables) == 300 * 4 + 20
    for block, table in enumerate(tables):
        orders = table["order"].to_numpy()
        assert (records.router(orders) == block).all()
