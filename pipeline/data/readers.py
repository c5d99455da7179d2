"""Readers: one read unit (file or dataset) -> document records, bad input quarantined in place.

Every record has the same fields: `doc_key` (sortable, unique: source, file, line), `unit` (the
file URI), `source_index`, `label`, `text` (None when rejected), `reject` (None or a reason) and
`raw` (the original bytes of a rejected record, so nothing is lost). A bad line never stops its
neighbours from being read.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from functools import lru_cache

from ..config.data import DataConfig, SourceConfig
from ..storage import StorageSettings, open_store

# Reasons that count as malformed input for the per-file error-rate limit.
MALFORMED_REASONS = ("malformed_json", "invalid_utf8", "missing_text", "unreadable")


@lru_cache(maxsize=64)
def _store(root: str, settings: StorageSettings):
    return open_store(root, settings)


def _record(
    unit: dict, position: int, text: str | None, reject: str | None, raw: bytes | None = None, label: str | None = None
) -> dict:
    return {
        "doc_key": f"{unit['source_index']:03d}|{unit['uri']}|{position:010d}",
        "unit": unit["uri"],
        "source_index": unit["source_index"],
        "label": label if label is not None else unit.get("label"),
        "text": text,
        "reject": reject,
        "raw": raw,
    }


def _decompress(key: str, data: bytes) -> bytes:
    if key.endswith(".gz"):
        return gzip.decompress(data)
    if key.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def read_jsonl(unit: dict, source: SourceConfig, data: bytes, max_bytes: int) -> Iterator[dict]:
    for number, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        if len(line) > max_bytes:
            yield _record(unit, number, None, "oversized", line)
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            yield _record(unit, number, None, "invalid_utf8", line)
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError:
            yield _record(unit, number, None, "malformed_json", line)
            continue
        text = obj.get(source.text_field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            yield _record(unit, number, None, "missing_text", line)
            continue
        label = obj.get(source.label_field) if source.label_field else None
        yield _record(unit, number, text, None, None, None if label is None else str(label))


def read_text(unit: dict, data: bytes, max_bytes: int) -> Iterator[dict]:
    if len(data) > max_bytes:
        yield _record(unit, 0, None, "oversized", data)
        return
    try:
        yield _record(unit, 0, data.decode("utf-8"), None)
    except UnicodeDecodeError:
        yield _record(unit, 0, None, "invalid_utf8", data)


def read_parquet(unit: dict, source: SourceConfig, data: bytes, max_bytes: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    if source.text_field not in table.column_names:
        yield _record(unit, 0, None, "missing_text", f"no column {source.text_field!r}".encode())
        return
    yield from _rows(unit, source, table.to_pylist(), max_bytes)


def _rows(unit: dict, source: SourceConfig, rows, max_bytes: int) -> Iterator[dict]:
    for number, row in enumerate(rows):
        text = row.get(source.text_field)
        label = row.get(source.label_field) if source.label_field else None
        label = None if label is None else str(label)
        if not isinstance(text, str):
            yield _record(unit, number, None, "missing_text", json.dumps(row, default=str).encode())
        elif len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            yield _record(unit, number, None, "oversized", text.encode("utf-8", "surrogatepass"))
        else:
            yield _record(unit, number, text, None, None, label)


def read_hf(unit: dict, source: SourceConfig, max_bytes: int) -> Iterator[dict]:
    import datasets

    if unit["kind"] == "hf_disk":
        loaded = datasets.load_from_disk(unit["uri"].removeprefix("file://"))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[source.split]
    else:
        loaded = datasets.load_dataset(source.uri, split=source.split)
    yield from _rows(unit, source, iter(loaded), max_bytes)


class UnitReader:
    """Ray Data `flat_map` callable: a unit row -> its records."""

    def __init__(self, config: DataConfig, settings: StorageSettings) -> None:
        self.config = config
        self.settings = settings

    def __call__(self, unit: dict) -> list[dict]:
        source = self.config.sources[unit["source_index"]]
        max_bytes = self.config.filters.max_doc_bytes
        try:
            if unit["kind"] in ("hf_disk", "hf_hub"):
                return list(read_hf(unit, source, max_bytes))
            data = _store(unit["root"], self.settings).read(unit["key"])
            if unit["kind"] == "text":
                return list(read_text(unit, data, max_bytes))
            data = _decompress(unit["key"], data)
            if unit["kind"] == "jsonl":
                return list(read_jsonl(unit, source, data, max_bytes))
            return list(read_parquet(unit, source, data, max_bytes))
        except (OSError, EOFError, ValueError) as error:
            # Unreadable as a whole (truncated gzip, broken parquet footer...): one reject record
            # naming the file; the error-rate check then fails the run with this file's name.
            return [_record(unit, 0, None, "unreadable", f"{type(error).__name__}: {error}".encode())]
