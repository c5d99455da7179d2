"""The filter chain's contract: typed config (unknown keys rejected, the earlier mapping form read as
a length filter), per-source application (content, skip_filters), rejects named `<filter>/<reason>`,
counters, decisions independent of how rows are cut into batches, the per-filter stats rows and the
processing hash (and the refresh of a dataset built before the chain)."""

from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.config.data import DataConfig
from pipeline.config.run import RunConfig
from pipeline.data.filters.chain import FilterChain
from pipeline.data.filters.stats import chain_names, filter_rows
from pipeline.data.readers import READ_SCHEMA
from pipeline.data.stage import legacy_sha256, processing_sha256, same_processing


def _table(texts, sources=None, rejects=None):
    n = len(texts)
    return pa.table(
        {
            "unit_index": [0] * n,
            "pid": [0] * n,
            "line": list(range(n)),
            "source_index": sources or [0] * n,
            "label": [None] * n,
            "text": texts,
            "reject": rejects or [None] * n,
            "raw": [b""] * n,
        },
        schema=READ_SCHEMA,
    )


def test_config_rejects_unknown_keys_types_and_names():
    with pytest.raises(ValidationError, match="bogus"):
        DataConfig.model_validate({"filters": [{"type": "gopher_quality", "bogus": 1}]})
    with pytest.raises(ValidationError, match="does not match any of the expected tags|union_tag_invalid"):
        DataConfig.model_validate({"filters": [{"type": "perplexity"}]})
    with pytest.raises(ValidationError, match="used twice"):
        DataConfig.model_validate({"filters": [{"type": "length"}, {"type": "length", "min_chars": 3}]})
    with pytest.raises(ValidationError, match="skip_filters"):
        DataConfig.model_validate({"sources": [{"kind": "python-stdlib", "skip_filters": ["c4"]}]})


def test_earlier_mapping_form_is_a_length_filter_and_its_datasets_still_refresh():
    data = DataConfig.model_validate({"filters": {"min_chars": 8, "max_doc_bytes": 20000}})
    assert [f.type for f in data.filters] == ["length"] and data.filters[0].min_chars == 8
    assert data.max_doc_bytes == 20000
    # A dataset built before the chain with the default settings (stdlib code): its stored hash,
    # as that code computed it, and its stored config's mapping form.
    before = SimpleNamespace(
        config_sha256="fd7f49533975a317562f76ffa3b0a889a476778eb863d18ca526dcbe6659f74d",
        config={"filters": {"min_chars": 16}, "sources": [{"kind": "python-stdlib"}]},
    )
    default = RunConfig()
    assert legacy_sha256(default) == before.config_sha256
    # Today's default chain adds PII redaction, for web text only: code refreshes as before...
    assert same_processing(before, default, processing_sha256(default))
    # ...but not once a web source is added (its documents would be redacted, the published ones not),
    web = RunConfig.model_validate({"data": {"sources": [{"kind": "python-stdlib"}, {"kind": "jsonl", "uri": "x"}]}})
    assert not same_processing(before, web, processing_sha256(web))
    # unless the chain is the length filter alone (the mapping form), whatever the sources.
    legacy_web = RunConfig.model_validate({"data": {"sources": web.data.sources, "filters": {"min_chars": 16}}})
    assert same_processing(before, legacy_web, processing_sha256(legacy_web))
    # Another length filter, one that misses the code, or a source skipping it: not the same.
    for filters, sources in (
        ([{"type": "length"}, {"type": "length", "name": "strict", "min_chars": 500}], [{"kind": "python-stdlib"}]),
        ([{"type": "length", "content": ["web"]}], [{"kind": "python-stdlib"}]),
        ([{"type": "length"}], [{"kind": "python-stdlib", "skip_filters": ["length"]}]),
    ):
        changed = RunConfig.model_validate({"data": {"sources": sources, "filters": filters}})
        assert not same_processing(before, changed, processing_sha256(changed))


def test_processing_hash_is_the_chain_each_kind_of_content_gets():
    def sha(**data):
        return processing_sha256(RunConfig.model_validate({"data": data}))

    web = [{"kind": "jsonl", "uri": "x"}]
    both = [*web, {"kind": "python-stdlib"}]
    # Adding a source of another kind, naming a filter, a dry-run entry: the same processing.
    assert sha(sources=web) == sha(sources=both)
    assert sha(sources=web, filters=[{"type": "length"}, {"type": "pii", "name": "redact"}]) == sha(sources=web)
    dry = [{"type": "length"}, {"type": "pii"}, {"type": "gopher_quality", "dry_run": True}]
    assert sha(sources=web, filters=dry) == sha(sources=web)
    # Moving a filter to another kind of content, or changing a threshold: another processing.
    assert sha(filters=[{"type": "length"}, {"type": "pii", "content": ["code"]}]) != sha()
    assert sha(filters=[{"type": "length", "min_chars": 17}, {"type": "pii"}]) != sha()
    # The word splitter matters only to filters that split words.
    assert sha(word_tokenizer="spacy") == sha()
    assert sha(filters="fineweb", word_tokenizer="spacy") != sha(filters="fineweb")


def test_filters_apply_per_source_content_and_opt_outs():
    data = DataConfig.model_validate(
        {
            "sources": [
                {"kind": "jsonl", "uri": "web"},  # content web: length + pii
                {"kind": "python-stdlib"},  # code: length only (pii is for web)
                {"kind": "jsonl", "uri": "opt-out", "skip_filters": ["pii"]},
            ],
            "filters": [{"type": "length", "min_chars": 4}, {"type": "pii"}],
        }
    )
    mail = "write to jane.doe@example.com today"
    counts = Counter()
    out = FilterChain(data).apply(_table([mail, mail, mail, "no"], sources=[0, 1, 2, 0]), counts)
    assert out["text"].to_pylist()[:3] == ["write to <EMAIL> today", mail, mail]
    assert out["reject"].to_pylist() == [None, None, None, "length/too_short"]
    assert counts == {"length/checked": 4, "pii/checked": 1, "pii/email": 1, "pii/docs_redacted": 1}
    assert {"language", "language_score"} <= set(out.schema.names)


def test_an_emptied_document_is_dropped_whatever_shares_its_batch():
    data = DataConfig.model_validate({"sources": [{"kind": "jsonl", "uri": "x"}], "filters": [{"type": "pii"}]})
    chain = FilterChain(data)
    alone = chain.apply(_table(["   \n"]))["reject"].to_pylist()
    together = chain.apply(_table(["   \n", "write jane@example.com now"]))["reject"].to_pylist()
    assert alone == together[:1] == [None]  # blank, but not emptied by the filter (length drops it)


def test_rows_already_rejected_are_not_seen_and_decisions_do_not_depend_on_batching():
    data = DataConfig.model_validate(
        {"sources": [{"kind": "jsonl", "uri": "x"}], "filters": [{"type": "length", "min_chars": 6}]}
    )
    texts = [f"document number {i}" if i % 3 else "tiny" for i in range(30)]
    rejects = ["malformed_json" if i == 4 else None for i in range(30)]
    chain = FilterChain(data)
    whole = chain.apply(_table(texts, rejects=rejects))
    parts = [chain.apply(_table(texts[a : a + 7], rejects=rejects[a : a + 7])) for a in range(0, 30, 7)]
    assert pa.concat_tables(parts)["reject"].to_pylist() == whole["reject"].to_pylist()
    assert whole["reject"].to_pylist()[4] == "malformed_json"


def test_stats_rows_follow_the_chain_order():
    rejected = {"gopher_quality/gopher_short_doc": 5, "length/empty": 1, "malformed_json": 2, "c4/curly_bracket": 3}
    counters = {"length/checked": 20, "gopher_quality/checked": 19, "c4/checked": 14, "c4/line-filter-javascript": 2}
    config = {"filters": [{"type": "length"}, {"type": "gopher_quality"}, {"type": "c4", "name": None}]}
    rows = filter_rows(rejected, counters, chain_names(config))
    assert [r.name for r in rows] == ["length", "gopher_quality", "c4"]
    assert [(r.checked, r.dropped) for r in rows] == [(20, 1), (19, 5), (14, 3)]
    assert rows[2].counters == {"line-filter-javascript": 2} and rows[1].reasons_text() == "gopher_short_doc 5"
