"""The filter chain's contract: typed config (unknown keys rejected, the earlier mapping form read as
a length filter), per-source application (content, skip_filters), rejects named `<filter>/<reason>`,
counters, decisions independent of how rows are cut into batches, the per-filter stats rows and the
processing hash of a dataset built before the chain."""

from collections import Counter

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.config.data import DataConfig
from pipeline.config.run import RunConfig
from pipeline.data.filters.chain import FilterChain
from pipeline.data.filters.stats import chain_names, filter_rows
from pipeline.data.readers import READ_SCHEMA
from pipeline.data.stage import processing_sha256


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


def test_earlier_mapping_form_is_a_length_filter_and_keeps_its_processing_hash():
    data = DataConfig.model_validate({"filters": {"min_chars": 8, "max_doc_bytes": 20000}})
    assert [f.type for f in data.filters] == ["length", "pii"] and data.filters[0].min_chars == 8
    assert data.max_doc_bytes == 20000
    # The hash of the default stdlib config before the chain (a dataset built then still refreshes):
    # PII redaction applies to web sources only, so for code it changes nothing.
    assert processing_sha256(RunConfig()) == "fd7f49533975a317562f76ffa3b0a889a476778eb863d18ca526dcbe6659f74d"
    web = RunConfig.model_validate({"data": {"sources": [{"kind": "jsonl", "uri": "x"}]}})
    assert processing_sha256(web) != processing_sha256(RunConfig())


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
