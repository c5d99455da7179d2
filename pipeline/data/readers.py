"""Readers: one read piece (files, or a byte range / row groups of one large file) -> an Arrow
table of document records, bad input quarantined in place.

Records have the columns of `READ_SCHEMA`: `unit_index` (position of the file in this run's unit
list), `pid` (the part of the file that was read), `line` (position of the record in its file; for
a byte range of a jsonl file, relative to the range's first line, fixed up once every range's line
count is known), `source_index`, `label`,
`text` (None when rejected), `reject` (None or a reason) and `raw` (the original bytes of a
rejected record, so nothing is lost). A bad line never stops its neighbours from being read.
"""

from __future__ import annotations

import gzip
import io
import json
from functools import lru_cache

import pyarrow as pa

from ..config.data import DataConfig, SourceConfig
from ..storage import StorageSettings, open_store
from .sources import SourceUnit, UnitPart

# Reasons that count as malformed input for the per-file error-rate limit.
MALFORMED_REASONS = ("malformed_json", "invalid_utf8", "missing_text", "unreadable")

READ_SCHEMA = pa.schema(
    [
        ("unit_index", pa.int32()),
        ("pid", pa.int32()),
        ("line", pa.int64()),
        ("source_index", pa.int32()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("reject", pa.string()),
        ("raw", pa.binary()),
    ]
)


@lru_cache(maxsize=64)
def _store(root: str, settings: StorageSettings):
    return open_store(root, settings)


class Records:
    """Column builder for the records of one unit (no per-record dicts)."""

    def __init__(self, part: UnitPart) -> None:
        self.part = part
        self.line: list[int] = []
        self.text: list[str | None] = []
        self.reject: list[str | None] = []
        self.raw: list[bytes | None] = []
        self.label: list[str | None] = []

    def add(self, position: int, text: str | None, reject: str | None, raw=None, label: str | None = None) -> None:
        if text is not None and not _encodable(text):
            text, reject, raw = None, "invalid_utf8", text.encode("utf-8", "surrogatepass")
        self.line.append(position)
        self.text.append(text)
        self.reject.append(reject)
        self.raw.append(raw)
        self.label.append(label if label is not None else self.part.unit.label)

    def table(self) -> pa.Table:
        n = len(self.line)
        return pa.table(
            {
                "unit_index": pa.array([self.part.index] * n, pa.int32()),
                "pid": pa.array([self.part.pid] * n, pa.int32()),
                "line": pa.array(self.line, pa.int64()),
                "source_index": pa.array([self.part.unit.source_index] * n, pa.int32()),
                "label": pa.array(self.label, pa.string()),
                "text": pa.array(self.text, pa.string()),
                "reject": pa.array(self.reject, pa.string()),
                "raw": pa.array(self.raw, pa.binary()),
            },
            schema=READ_SCHEMA,
        )


def _encodable(text: str) -> bool:
    """Lone surrogates (from JSON escapes) are not valid UTF-8 and cannot enter Arrow."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _decompress(key: str, data: bytes) -> bytes:
    if key.endswith(".gz"):
        return gzip.decompress(data)
    if key.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def splittable(unit: SourceUnit) -> bool:
    """Files whose byte ranges / row groups can be read by separate tasks (uncompressed)."""
    return unit.kind in ("jsonl", "parquet") and not unit.key.endswith((".gz", ".zst"))


def read_jsonl(out: Records, source: SourceConfig, data: bytes, max_bytes: int) -> None:
    for number, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        if len(line) > max_bytes:
            out.add(number, None, "oversized", line)
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            out.add(number, None, "invalid_utf8", line)
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError:
            out.add(number, None, "malformed_json", line)
            continue
        text = obj.get(source.text_field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            out.add(number, None, "missing_text", line)
            continue
        label = obj.get(source.label_field) if source.label_field else None
        out.add(number, text, None, None, None if label is None else str(label))


def read_text(out: Records, data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        out.add(0, None, "oversized", data)
        return
    try:
        out.add(0, data.decode("utf-8"), None)
    except UnicodeDecodeError:
        out.add(0, None, "invalid_utf8", data)


def _rows(out: Records, source: SourceConfig, table: pa.Table, max_bytes: int, first_row: int = 0) -> None:
    texts = table.column(source.text_field).to_pylist() if source.text_field in table.column_names else None
    labels = table.column(source.label_field).to_pylist() if source.label_field in table.column_names else None
    for number in range(table.num_rows):
        text = texts[number] if texts is not None else None
        label = labels[number] if labels is not None else None
        label = None if label is None else str(label)
        if not isinstance(text, str):
            row = {name: table.column(name)[number].as_py() for name in table.column_names}
            out.add(first_row + number, None, "missing_text", json.dumps(row, default=str).encode())
        elif len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            out.add(first_row + number, None, "oversized", text.encode("utf-8", "surrogatepass"))
        else:
            out.add(first_row + number, text, None, None, label)


def read_parquet(out: Records, source: SourceConfig, handle, row_groups: tuple[int, int] | None, max_bytes: int):
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    if source.text_field not in parquet.schema_arrow.names:
        if row_groups is None or row_groups[0] == 0:
            out.add(0, None, "missing_text", f"no column {source.text_field!r}".encode())
        return
    first, last = row_groups if row_groups is not None else (0, parquet.num_row_groups)
    first_row = sum(parquet.metadata.row_group(i).num_rows for i in range(first))
    table = parquet.read_row_groups(list(range(first, last))) if last > first else None
    if table is not None:
        _rows(out, source, table, max_bytes, first_row)


def read_hf(out: Records, unit: SourceUnit, source: SourceConfig, max_bytes: int) -> None:
    import datasets

    if unit.kind == "hf_disk":
        loaded = datasets.load_from_disk(unit.uri.removeprefix("file://"))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[source.split]
    else:
        loaded = datasets.load_dataset(source.uri, split=source.split)
    _rows(out, source, loaded.with_format("arrow")[:], max_bytes)


def _read_range(store, key: str, start: int, end: int) -> tuple[bytes, int]:
    """The lines of [start, end) of a file (a line belongs to the range holding its first byte) and
    the number of line starts in the range (for numbering the lines of the following ranges)."""
    with store.fs.open_input_file(store.path(key)) as handle:
        size = handle.size()
        end = min(end, size)
        lead = handle.read_at(1, start - 1) if start > 0 else b"\n"
        data = handle.read_at(end - start, start)
        starts = int(lead == b"\n") + data[:-1].count(b"\n")
        if lead != b"\n":  # the first line started in the previous range
            cut = data.find(b"\n")
            data = b"" if cut < 0 else data[cut + 1 :]
        at = end
        while data and not data.endswith(b"\n") and at < size:  # finish the last line, which starts here
            chunk = handle.read_at(1 << 16, at)
            cut = chunk.find(b"\n")
            data += chunk if cut < 0 else chunk[: cut + 1]
            at += len(chunk)
    return data, starts


def read_unit(planned: UnitPart, config: DataConfig, settings: StorageSettings) -> tuple[pa.Table, int]:
    """Records of one unit (or one part of it); returns (table, line starts in this part)."""
    unit = planned.unit
    source = config.sources[unit.source_index]
    max_bytes = config.filters.max_doc_bytes
    part = planned.part  # (start, end) bytes for jsonl, row groups for parquet; None: whole
    out = Records(planned)
    lines = 0
    try:
        if unit.kind in ("hf_disk", "hf_hub"):
            read_hf(out, unit, source, max_bytes)
            return out.table(), 0
        store = _store(unit.root, settings)
        if unit.kind == "parquet" and part is not None:
            with store.fs.open_input_file(store.path(unit.key)) as handle:
                read_parquet(out, source, handle, tuple(part), max_bytes)
            return out.table(), 0
        if unit.kind == "jsonl" and part is not None:
            data, lines = _read_range(store, unit.key, *part)
            read_jsonl(out, source, data, max_bytes)
            return out.table(), lines
        data = store.read(unit.key)
        if unit.kind == "text":
            read_text(out, data, max_bytes)
            return out.table(), 1
        data = _decompress(unit.key, data)
        if unit.kind == "jsonl":
            read_jsonl(out, source, data, max_bytes)
            return out.table(), 0
        read_parquet(out, source, io.BytesIO(data), None, max_bytes)
        return out.table(), 0
    except (OSError, EOFError, ValueError, pa.ArrowException) as error:
        # Unreadable as a whole (truncated gzip, broken parquet footer...): one reject record
        # naming the file; the error-rate check then fails the run with this file's name.
        out = Records(planned)
        out.add(0, None, "unreadable", f"{type(error).__name__}: {error}".encode())
        return out.table(), 0
