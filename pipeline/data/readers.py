"""Readers: one read part (a file, or a byte range / row groups of one large file) -> a stream of
Arrow tables of document records (chunks of about `chunk_bytes`), bad input quarantined in place.

Records have the columns of `READ_SCHEMA`: `unit_index` (position of the file in this run's unit
list), `pid` (the part of the file that was read), `line` (position of the record in its file; for
a byte range of a jsonl file, relative to the range's first line, fixed up once every range's line
count is known), `source_index`, `label`,
`text` (None when rejected), `reject` (None or a reason) and `raw` (the original bytes of a
rejected record, so nothing is lost). A bad line never stops its neighbours from being read.

Memory follows the chunk size, not the file: a whole jsonl file (`.gz` / `.zst` too) is read as a
stream (pyarrow's codec streams over `open_input_stream`, which, unlike zstandard's stream_reader,
report a truncated `.zst` frame) and cut at line boundaries; parquet is read a batch of rows at a
time; an HF dataset is iterated in batches (memory-mapped from disk, streamed from the hub). A jsonl
byte range is read whole: the planner bounds it (`plan.MAX_PIECE_BYTES`). A text file is one
document. What stays unbounded is one line or document: the longest line is held whole, as an
uncompressed file's reader holds it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import lru_cache

import pyarrow as pa

from ..config.data import DataConfig, SourceConfig
from ..storage import StorageSettings, open_store
from .sources import SourceUnit, UnitPart

# Reasons that count as malformed input for the per-file error-rate limit.
MALFORMED_REASONS = ("malformed_json", "invalid_utf8", "missing_text", "unreadable")
# What reading a file may raise when the file itself is bad (truncated archive, broken parquet
# footer...): the part becomes one `unreadable` record naming the file.
READ_ERRORS = (OSError, EOFError, ValueError, pa.ArrowException)
_CODECS = {".gz": "gzip", ".zst": "zstd"}
_STREAM_READ = 1 << 20  # bytes of decompressed input split into lines at a time

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
    """Column builder for the records of one unit part (no per-record dicts); `take()` hands out
    what was added so far, once `full` (about `chunk_bytes` of input) or at the end."""

    def __init__(self, part: UnitPart, chunk_bytes: int = 1 << 62) -> None:
        self.part = part
        self.chunk_bytes = chunk_bytes
        self._reset()

    def _reset(self) -> None:
        self.line: list[int] = []
        self.text: list[str | None] = []
        self.reject: list[str | None] = []
        self.raw: list[bytes | None] = []
        self.label: list[str | None] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self.line)

    @property
    def full(self) -> bool:
        return self.size >= self.chunk_bytes

    def add(
        self,
        position: int,
        text: str | None,
        reject: str | None,
        raw=None,
        label: str | None = None,
        size: int | None = None,
    ) -> None:
        """One record; `size` is its input bytes (default: its raw or text length)."""
        if text is not None and not _encodable(text):
            text, reject, raw = None, "invalid_utf8", text.encode("utf-8", "surrogatepass")
        self.line.append(position)
        self.text.append(text)
        self.reject.append(reject)
        self.raw.append(raw)
        self.label.append(label if label is not None else self.part.unit.label)
        self.size += size if size is not None else len(raw) if raw is not None else len(text or "")

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

    def take(self) -> pa.Table:
        table = self.table()
        self._reset()
        return table


def _encodable(text: str) -> bool:
    """Lone surrogates (from JSON escapes) are not valid UTF-8 and cannot enter Arrow."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def splittable(unit: SourceUnit) -> bool:
    """Files whose byte ranges / row groups can be read by separate tasks (uncompressed)."""
    return unit.kind in ("jsonl", "parquet") and not unit.key.endswith(tuple(_CODECS))


def stream_lines(stream, read_size: int = _STREAM_READ) -> Iterator[bytes]:
    """The pieces of `data.split(b"\\n")` of a byte stream's whole content (the same numbering,
    the last piece included even when empty), reading `read_size` bytes at a time."""
    pending: list[bytes] = []
    while True:
        data = stream.read(read_size)
        if not data:
            break
        pieces = data.split(b"\n")
        if len(pieces) == 1:
            pending.append(data)  # a line longer than one read: joined once it ends
            continue
        pending.append(pieces[0])
        yield b"".join(pending)
        yield from pieces[1:-1]
        pending = [pieces[-1]]
    yield b"".join(pending)


def read_jsonl(out: Records, source: SourceConfig, lines: Iterable[bytes], max_bytes: int) -> Iterator[pa.Table]:
    """Records of jsonl lines (numbered by position, blank lines counted); yields full chunks."""
    for number, line in enumerate(lines):
        if out.full:
            yield out.take()
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
        out.add(number, text, None, None, None if label is None else str(label), len(line))


def read_text(out: Records, data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        out.add(0, None, "oversized", data)
        return
    try:
        out.add(0, data.decode("utf-8"), None)
    except UnicodeDecodeError:
        out.add(0, None, "invalid_utf8", data)


def _rows(
    out: Records, source: SourceConfig, table: pa.Table, max_bytes: int, first_row: int = 0
) -> Iterator[pa.Table]:
    """Records of the rows of a table (parquet, HF), numbered from `first_row`; yields full chunks."""
    texts = table.column(source.text_field).to_pylist() if source.text_field in table.column_names else None
    labels = table.column(source.label_field).to_pylist() if source.label_field in table.column_names else None
    for number in range(table.num_rows):
        if out.full:
            yield out.take()
        text = texts[number] if texts is not None else None
        label = labels[number] if labels is not None else None
        label = None if label is None else str(label)
        if not isinstance(text, str):
            row = {name: table.column(name)[number].as_py() for name in table.column_names}
            out.add(first_row + number, None, "missing_text", json.dumps(row, default=str).encode())
            continue
        encoded = text.encode("utf-8", "surrogatepass")
        if len(encoded) > max_bytes:
            out.add(first_row + number, None, "oversized", encoded)
        else:
            out.add(first_row + number, text, None, None, label, len(encoded))


def _batch_rows(total_bytes: int, rows: int, chunk_bytes: int) -> int:
    """Rows per read batch so that a batch holds about one chunk."""
    per_row = max(1, total_bytes // max(1, rows))
    return max(1, min(1 << 16, chunk_bytes // per_row))


class UnitReader:
    """The records of one unit part, as tables of about `chunk_bytes` of input each.

    Iterate it once. `first_line` is the position of the part's first record (a later run of row
    groups starts at its first row); after the iteration, `lines` holds the line starts of a jsonl
    byte range (what numbers the file's following ranges). A file that cannot be read raises one
    of `READ_ERRORS` out of the iteration (the caller quarantines it, see `plan.read_piece`)."""

    def __init__(self, planned: UnitPart, config: DataConfig, settings: StorageSettings, chunk_bytes: int) -> None:
        self.planned = planned
        self.source = config.sources[planned.unit.source_index]
        self.max_bytes = config.max_doc_bytes
        self.settings = settings
        self.chunk_bytes = chunk_bytes
        self.first_line = 0
        self.lines = 0

    def __iter__(self) -> Iterator[pa.Table]:
        out = Records(self.planned, self.chunk_bytes)
        yield from self._read(out)
        if len(out):
            yield out.take()

    def _read(self, out: Records) -> Iterator[pa.Table]:
        unit, part, source, max_bytes = self.planned.unit, self.planned.part, self.source, self.max_bytes
        if unit.kind in ("hf_disk", "hf_hub"):
            for first, batch in self._hf_batches():
                yield from _rows(out, source, batch, max_bytes, first)
            return
        store = _store(unit.root, self.settings)
        if unit.kind == "parquet":
            with store.fs.open_input_file(store.path(unit.key)) as handle:
                yield from self._parquet(out, handle, None if part is None else tuple(part))
            return
        if unit.kind == "jsonl" and part is not None:
            data, self.lines = _read_range(store, unit.key, *part)
            yield from read_jsonl(out, source, data.split(b"\n"), max_bytes)
            return
        if unit.kind == "text":
            read_text(out, store.read(unit.key), max_bytes)
            self.lines = 1
            return
        codec = next((c for suffix, c in _CODECS.items() if unit.key.endswith(suffix)), None)
        with _open_stream(store, unit.key, codec) as stream:
            yield from read_jsonl(out, source, stream_lines(stream, min(self.chunk_bytes, _STREAM_READ)), max_bytes)

    def _parquet(self, out: Records, handle, row_groups: tuple[int, int] | None) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(handle)
        metadata = parquet.metadata
        first, last = row_groups if row_groups is not None else (0, parquet.num_row_groups)
        self.first_line = sum(metadata.row_group(i).num_rows for i in range(first))
        if self.source.text_field not in parquet.schema_arrow.names:
            if first == 0:
                out.add(0, None, "missing_text", f"no column {self.source.text_field!r}".encode())
            return
        groups = list(range(first, last))
        if not groups:
            return
        rows = sum(metadata.row_group(i).num_rows for i in groups)
        size = sum(metadata.row_group(i).total_byte_size for i in groups)
        number = self.first_line
        for batch in parquet.iter_batches(batch_size=_batch_rows(size, rows, self.chunk_bytes), row_groups=groups):
            yield from _rows(out, self.source, pa.Table.from_batches([batch]), self.max_bytes, number)
            number += batch.num_rows

    def _hf_batches(self) -> Iterator[tuple[int, pa.Table]]:
        """(first row, rows) of an HF dataset: from disk memory-mapped, from the hub streamed."""
        import datasets

        unit, source = self.planned.unit, self.source
        if unit.kind == "hf_disk":
            loaded = datasets.load_from_disk(unit.uri.removeprefix("file://"))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[source.split]
            rows = _batch_rows(loaded.data.nbytes, loaded.num_rows, self.chunk_bytes)
        else:
            loaded = datasets.load_dataset(source.uri, split=source.split, streaming=True)
            rows = 1000  # sizes are unknown before reading
        first = 0
        for batch in loaded.with_format("arrow").iter(batch_size=rows):
            yield first, batch
            first += batch.num_rows


def _open_stream(store, key: str, codec: str | None):
    """A sequential input stream of `key`, decompressed by `codec` ('gzip', 'zstd' or None)."""
    try:
        return store.fs.open_input_stream(store.path(key), compression=codec)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise store.translate_error(error, key) from None


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


def unreadable(planned: UnitPart, position: int, error: BaseException) -> pa.Table:
    """The one record standing for a part that could not be read: it names the file (through the
    unit) and the error, and counts as malformed in the file's error rate."""
    out = Records(planned)
    out.add(position, None, "unreadable", f"{type(error).__name__}: {error}".encode())
    return out.table()


def read_unit(planned: UnitPart, config: DataConfig, settings: StorageSettings) -> tuple[pa.Table, int]:
    """All records of one unit (or part) in one table, and its line starts: for tools that want a
    whole file at once (the read tasks stream through `UnitReader` instead)."""
    reader = UnitReader(planned, config, settings, 1 << 62)
    try:
        tables = list(reader)
    except READ_ERRORS as error:
        return unreadable(planned, reader.first_line, error), 0
    return (pa.concat_tables(tables) if tables else READ_SCHEMA.empty_table()), reader.lines
