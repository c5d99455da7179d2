"""The filter chain inside the data stage (Ray tasks): a mixed corpus (English prose, a French
document, spam, boilerplate, code, PII) meets the FineWeb chain; each document's fate is the
expected one, the counts reach the manifest, the summary and the report's table, and the decisions
are the same whether the corpus is read in one build with three read tasks or in a first build
plus a refresh with one."""

import pytest
from datagen import data_config, write_jsonl
from mixedgen import mixed_web_documents

from pipeline.data.filters.stats import chain_names, filter_rows
from pipeline.data.quarantine import read_rejects
from pipeline.data.stage import preprocess
from pipeline.data.summary import Reporter, filters_table
from pipeline.report.tables import filters_markdown
from pipeline.storage import open_store

pytestmark = pytest.mark.usefixtures("ray_local")

CODE = "import sys\n\n\ndef main(argv):\n    for name in argv[1:]:\n        print({'name': name})\n" * 3


def _write(directory, docs, parts):
    for part in parts:
        write_jsonl(directory / "web" / f"part-{part}.jsonl", [text for text, _ in docs[part::2]])
    if not (directory / "code").exists():  # rewritten, it would be a changed file for a refresh
        (directory / "code").mkdir(parents=True)
        (directory / "code" / "tool.py").write_text(CODE)


def _build(root, corpus, read_blocks):
    config = data_config(
        root,
        str(corpus / "web"),
        sources=[
            {"kind": "jsonl", "uri": str(corpus / "web")},
            {"kind": "text", "uri": str(corpus / "code"), "content": "code"},
        ],
        filters="fineweb",
        read_blocks=read_blocks,
    )
    return preprocess(config, Reporter(quiet=True)), open_store(config.storage.root)


def _rejects(manifest, store):
    return read_rejects(store, f"datasets/{manifest.dataset}/rejects/{manifest.run_id}").to_pylist()


def _fates(manifest, store):
    """text -> reject reason of the chain's rejects of one build."""
    return {row["text"]: row["reason"] for row in _rejects(manifest, store)}


def test_mixed_corpus_fates_stats_and_the_same_decisions_on_refresh(tmp_path):
    docs = [pair for items in mixed_web_documents().values() for pair in items]
    _write(tmp_path / "all", docs, (0, 1))
    manifest, store = _build(f"file://{tmp_path}/one", tmp_path / "all", 3)
    fates = _fates(manifest, store)
    for text, expected in docs:
        assert fates.get(text) == expected, text[:60]
    assert CODE not in fates  # code: only length and decontamination apply (prose rules would drop it)
    french = next(row for row in _rejects(manifest, store) if row["reason"] == "language/lang_fr")
    assert french["language"] == "fr" and french["language_score"] > 0.9

    stats = manifest.stats.run
    dropped = sum(1 for _, expected in docs if expected)
    assert stats.docs_read == len(docs) + 1 and stats.docs_kept == len(docs) + 1 - dropped
    assert stats.filters["pii/email"] == 1 and stats.filters["pii/phone"] == 1
    assert stats.filters["language/lang_fr"] == 1 and stats.filters["length/checked"] == len(docs) + 1
    assert stats.filters["language/checked"] == len(docs)  # not the code source
    rows = {row.name: row for row in filter_rows(stats.rejected, stats.filters, chain_names(manifest.config))}
    assert list(rows) == ["length", "language", "gopher_repetition", "gopher_quality", "c4", "fineweb", "pii"] + [
        "decontaminate"
    ]
    assert rows["language"].dropped == 2 and rows["c4"].reasons == {"lorem_ipsum": 1}
    table = filters_markdown(manifest)
    assert "| language | 17 | 2 (11.8%) | lang_fr 1, low_score 1 |" in table
    assert filters_table(list(rows.values())).row_count == 8

    # The same corpus as a first build (one file) and a refresh (the other), one read task each.
    _write(tmp_path / "split", docs, (0,))
    first, store = _build(f"file://{tmp_path}/two", tmp_path / "split", 1)
    _write(tmp_path / "split", docs, (1,))
    second, _ = _build(f"file://{tmp_path}/two", tmp_path / "split", 1)
    assert second.version == first.version + 1
    assert {**_fates(first, store), **_fates(second, store)} == fates
