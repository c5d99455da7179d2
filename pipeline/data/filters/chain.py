"""The filter chain: `data.filters` built once per process and applied to a record table.

Each filter in list order sees the live rows of the sources it applies to (`content`,
`skip_filters`; a read chunk is one file's, so usually all rows or none). A dropped row
gets `reject = "<filter>/<reason>"` and keeps its text as it was when dropped (the rejects file
shows what the filter saw); rewritten texts replace the live rows' text. Counters are summed into
`counts` as `<filter>/<counter>`, with `<filter>/checked` (documents it saw); what it dropped is
counted from the `reject` column, like every other reject reason. A filter in `dry_run` changes
nothing: its would-be drops are counters `<filter>/would/<reason>`.
`decontaminate` is not applied here: it runs after dedup (`decontaminate.py`).
"""

from __future__ import annotations

import importlib
from collections import Counter

import numpy as np
import pyarrow as pa

from .base import DocFilter

# type -> (module, class): imported when a chain uses it (the language model loads only then).
_REGISTRY = {
    "length": ("length", "LengthDocFilter"),
    "gopher_quality": ("heuristics", "GopherQualityDocFilter"),
    "gopher_repetition": ("heuristics", "GopherRepetitionDocFilter"),
    "c4": ("heuristics", "C4DocFilter"),
    "fineweb": ("heuristics", "FineWebDocFilter"),
    "language": ("language", "LanguageDocFilter"),
    "pii": ("pii", "PIIDocFilter"),
}
# Columns a filter adds, in every record table whatever the chain (one schema for every run).
EXTRA_COLUMNS = {"language": pa.string(), "language_score": pa.float32()}

_CHAINS: dict[str, FilterChain] = {}


def filter_class(kind: str) -> type[DocFilter]:
    module, name = _REGISTRY[kind]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


class FilterChain:
    """The built filters of a data config, and which sources each applies to."""

    def __init__(self, data) -> None:
        self.filters: list[DocFilter] = []
        self.sources: list[set[int]] = []
        for spec in data.filters:
            if spec.type == "decontaminate":
                continue
            self.filters.append(filter_class(spec.type)(spec, data))
            self.sources.append(spec.sources(data))

    def apply(self, table: pa.Table, counts: Counter | None = None) -> pa.Table:
        """`table` (READ_SCHEMA rows, `reject` set for malformed ones) with the chain's rejects set,
        texts rewritten and the extra columns added; counters added to `counts`."""
        counts = counts if counts is not None else Counter()
        n = table.num_rows
        texts = table["text"].to_pylist()
        rejects = table["reject"].to_pylist()
        source = table["source_index"].to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int32)
        extra = {name: [None] * n for name in EXTRA_COLUMNS}
        for doc_filter, sources in zip(self.filters, self.sources, strict=True):
            rows = [i for i in range(n) if rejects[i] is None and texts[i] is not None and int(source[i]) in sources]
            if not rows:
                continue
            verdict = doc_filter([texts[i] for i in rows])
            counts[f"{doc_filter.label}/checked"] += len(rows)
            for key, value in verdict.counts.items():
                counts[f"{doc_filter.label}/{key}"] += int(value)
            for name, column in verdict.columns.items():
                values = column.to_pylist() if isinstance(column, pa.Array) else list(column)
                for i, value in zip(rows, values, strict=True):
                    extra[name][i] = value
            if doc_filter.spec.dry_run:
                for reason in verdict.reasons:
                    if reason is not None:
                        counts[f"{doc_filter.label}/would/{reason}"] += 1
                continue
            for j, i in enumerate(rows):
                reason = verdict.reasons[j]
                if reason is None and verdict.texts is not None and verdict.texts[j] != texts[i]:
                    texts[i] = verdict.texts[j]
                    # A rewrite that leaves nothing (C4 removing every line) is a drop: an empty
                    # document must not reach dedup and tokenizing.
                    reason = None if texts[i].strip() else "emptied"
                if reason is not None:
                    rejects[i] = f"{doc_filter.label}/{reason}"
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
        table = table.set_column(table.schema.get_field_index("reject"), "reject", pa.array(rejects, pa.string()))
        for name, kind in EXTRA_COLUMNS.items():
            table = table.append_column(name, pa.array(extra[name], kind))
        return table


def chain_for(data) -> FilterChain:
    """The chain of `data`, built once per process (a read task's worker reuses it across tasks)."""
    key = data.model_dump_json(include={"filters", "sources", "word_tokenizer"})
    chain = _CHAINS.get(key)
    if chain is None:
        _CHAINS.clear()  # one config at a time in a worker: no growth across runs
        chain = _CHAINS[key] = FilterChain(data)
    return chain


def reason_filter(reason: str) -> str | None:
    """The filter name of a chain reject reason (`<filter>/<reason>`), None for other reasons."""
    return reason.split("/", 1)[0] if "/" in reason else None


__all__ = ["FilterChain", "chain_for", "filter_class", "reason_filter"]
