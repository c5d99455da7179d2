"""Read planning and the read + clean tasks.

Units (files) are packed into pieces of about `total / blocks` bytes: many small files per task,
and a large uncompressed jsonl (parquet) file split into byte ranges (row groups) that separate
tasks read in parallel. Each task reads its piece as a stream, runs the per-document steps on
blocks of at most `read_block_bytes` of input and yields them one by one, then small per-file and
per-block counts; the driver only ever holds per-file, per-part and per-block numbers. A compressed
file (or an HF dataset) cannot be split, so its one task hands out as many blocks as it takes.

Document order is fixed by `doc_key` (`source|uri|line`): `order` is the same order as an int64
(file rank << 34 | line), computed once the line count of every byte range is known.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DataConfig
from ..errors import UserError
from ..storage import StorageSettings
from .filters.chain import reason_filter
from .readers import MALFORMED_REASONS, READ_ERRORS, READ_SCHEMA, UnitReader, _store, splittable, unreadable
from .sources import SourceUnit, UnitPart
from .steps import clean

_LINE_BITS = 34  # lines per file < 2^34 (doc_key pads lines to 10 digits)
MAX_PIECE_BYTES = 64 << 20


def plan_pieces(units: list[SourceUnit], blocks: int, settings: StorageSettings) -> tuple[list[list[UnitPart]], int]:
    """Pieces (lists of unit parts) of about equal size; returns (pieces, number of parts)."""
    total = sum(u.size for u in units)
    target = max(1, min(MAX_PIECE_BYTES, -(-total // max(1, blocks))))
    pieces: list[list[UnitPart]] = []
    current: list[UnitPart] = []
    size = 0
    pid = 0
    for index, unit in enumerate(units):
        if splittable(unit) and unit.size > target:
            for part in _parts(unit, target, settings):
                pieces.append([UnitPart(unit, index, pid, part)])
                pid += 1
            continue
        current.append(UnitPart(unit, index, pid))
        pid += 1
        size += unit.size
        if size >= target:
            pieces.append(current)
            current, size = [], 0
    if current:
        pieces.append(current)
    return pieces, pid


def _parts(unit: SourceUnit, target: int, settings: StorageSettings) -> list[tuple[int, int] | None]:
    if unit.kind == "jsonl":
        return [(start, min(start + target, unit.size)) for start in range(0, unit.size, target)]
    import pyarrow.parquet as pq

    store = _store(unit.root, settings)
    try:
        with store.fs.open_input_file(store.path(unit.key)) as handle:
            groups = pq.ParquetFile(handle).num_row_groups
    except (OSError, ValueError, pa.ArrowException):
        return [None]  # read whole: the reader quarantines it as unreadable
    count = max(1, min(groups, -(-unit.size // target)))
    bounds = np.linspace(0, groups, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a] or [(0, 0)]


@dataclass
class UnitCounts:
    """Records of one file (or part) read in a run: all, malformed, per reader reject reason and
    (`filtered`) per filter-chain reason. The driver keeps only the first three per file: the chain's
    reasons (up to ~200 per file with the languages) are summed per read task (`PieceMeta.rejected`)."""

    records: int = 0
    malformed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)

    def add(self, other: UnitCounts) -> None:
        self.records += other.records
        self.malformed += other.malformed
        for mine, theirs in ((self.reasons, other.reasons), (self.filtered, other.filtered)):
            for reason, count in theirs.items():
                mine[reason] = mine.get(reason, 0) + count


@dataclass
class PieceMeta:
    """What a read task reports besides its record blocks (all per part or per block, never per
    document): line starts per part (`pid`), counts per file (`unit_index`), the UTF-8 bytes of its
    live records, `segments` (block, pid, first line): where each part's records lie among the
    task's blocks, and `dropped` (pid, first line, end line): records of a part already handed out
    in earlier blocks when the rest of the part turned out unreadable (the driver removes them)."""

    lines: dict[int, int]
    units: dict[int, UnitCounts]
    live_bytes: int
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    dropped: list[tuple[int, int, int]] = field(default_factory=list)
    filter_counts: Counter = field(default_factory=Counter)  # `<filter>/<counter>` of the filter chain
    rejected: Counter = field(default_factory=Counter)  # the filter chain's reject reasons


def chunk_bytes(block_bytes: int) -> int:
    """Input bytes a reader hands over at a time: blocks are filled chunk by chunk."""
    return max(1 << 16, min(4 << 20, block_bytes // 8))


def read_piece(
    piece: list[UnitPart], config: DataConfig, settings: StorageSettings, finalize: Finalize | None = None
) -> Iterator[pa.Table | PieceMeta]:
    """Read and clean one piece, as a generator (a Ray streaming task): yields the record blocks,
    each of at most `config.read_block_bytes` of input (one record may exceed it) and at least one,
    then the `PieceMeta`. Memory stays bounded by the block size whatever the files' sizes. With
    `finalize` (when no line of the piece needs another piece's line count), the records are
    numbered here too.

    A part that cannot be read becomes one `unreadable` record, as if the part held nothing else:
    at the part's first line when none of its records has left the task yet (they are discarded),
    else after the last one handed out, and those are listed in `dropped`."""
    builder = _BlockBuilder(config, finalize)
    for part in piece:
        reader = UnitReader(part, config, settings, chunk_bytes(config.read_block_bytes))
        chunks = iter(reader)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except UserError:  # access denied, expired credentials: the run's problem, not the file's
                raise
            except READ_ERRORS as error:
                yield from builder.add(builder.unreadable(part, reader.first_line, error))
                break
            yield from builder.add(chunk)
        builder.meta.lines[part.pid] = reader.lines
    yield from builder.finish()


class _BlockBuilder:
    """A read task's blocks: chunks of records, cleaned, gathered up to the block size (in input
    bytes), then counted per part and (with `finalize`) numbered."""

    def __init__(self, config: DataConfig, finalize: Finalize | None) -> None:
        self.config, self.finalize = config, finalize
        self.block_bytes = config.read_block_bytes
        self.chunks: list[pa.Table] = []
        self.size = 0
        self.blocks = 0
        self.meta = PieceMeta({}, {}, 0)
        self.part_units: dict[int, int] = {}
        self.part_counts: dict[int, UnitCounts] = {}
        self.part_live: dict[int, int] = {}
        self.part_lines: dict[int, tuple[int, int]] = {}  # pid -> (first, last) line handed out
        self.part_filters: dict[int, Counter] = {}  # pid -> the filter chain's counters

    def add(self, chunk: pa.Table) -> Iterator[pa.Table]:
        """Take a chunk of raw records (one part's); yields the block it does not fit in. Chunks are
        cleaned as they come (the steps are per document): a task holds the cleaning copies of
        one chunk at a time, not of a whole block."""
        size = chunk.nbytes
        if self.chunks and self.size + size > self.block_bytes:
            yield self._emit()
            # Arrow's allocator (mimalloc) keeps freed pages: without this a task's RSS is about
            # twice its live memory.
            pa.default_memory_pool().release_unused()
        pid = chunk["pid"][0].as_py() if chunk.num_rows else -1
        self.chunks.append(clean(chunk, self.config, self.part_filters.setdefault(pid, Counter())))
        self.size += size

    def finish(self) -> Iterator[pa.Table | PieceMeta]:
        if self.chunks or not self.blocks:
            yield self._emit()
        for pid, counts in self.part_counts.items():
            self.meta.rejected.update(counts.filtered)
            counts.filtered = {}
            self.meta.units.setdefault(self.part_units[pid], UnitCounts()).add(counts)
        for counters in self.part_filters.values():
            self.meta.filter_counts.update(counters)
        self.meta.live_bytes = sum(self.part_live.values())
        yield self.meta

    def unreadable(self, part: UnitPart, first_line: int, error: BaseException) -> pa.Table:
        """The record standing for an unreadable part; its records not handed out yet are dropped,
        those that were are listed for the driver to drop (and no longer counted)."""
        self.chunks = [c for c in self.chunks if not (c.num_rows and c["pid"][0].as_py() == part.pid)]
        self.size = sum(c.select(READ_SCHEMA.names).nbytes for c in self.chunks)
        self.part_filters.pop(part.pid, None)  # none of the part's records is kept or counted
        position = first_line
        if part.pid in self.part_lines:
            first, last = self.part_lines.pop(part.pid)
            self.meta.dropped.append((part.pid, first, last + 1))
            self.part_counts.pop(part.pid, None)
            self.part_live.pop(part.pid, None)
            position = last + 1
        return unreadable(part, position, error)

    def _emit(self) -> pa.Table:
        table = pa.concat_tables(self.chunks) if self.chunks else clean(READ_SCHEMA.empty_table(), self.config)
        self.chunks, self.size = [], 0
        for pid, counts in unit_counts(table, "pid").items():
            self.part_counts.setdefault(pid, UnitCounts()).add(counts)
        stats = (
            table.select(["pid", "unit_index", "line", "n_bytes"])
            .group_by("pid")
            .aggregate([("unit_index", "min"), ("line", "min"), ("line", "max"), ("n_bytes", "sum")])
        )
        columns = ("pid", "unit_index_min", "line_min", "line_max", "n_bytes_sum")
        for pid, unit, first, last, live in zip(*(stats[c].to_pylist() for c in columns), strict=True):
            self.part_units[pid] = unit
            self.part_live[pid] = self.part_live.get(pid, 0) + (live or 0)
            self.part_lines[pid] = (self.part_lines.get(pid, (first, 0))[0], last)
            self.meta.segments.append((self.blocks, pid, first))
        self.blocks += 1
        return self.finalize(table) if self.finalize is not None else table


def unit_counts(table: pa.Table, key: str = "unit_index") -> dict[int, UnitCounts]:
    """Per file (or per `key`, e.g. part): records, malformed records and reasons."""
    frame = table.select([key, "reject"]).group_by([key, "reject"]).aggregate([([], "count_all")])
    out: dict[int, UnitCounts] = {}
    for unit, reason, count in zip(*(frame[c].to_pylist() for c in (key, "reject", "count_all")), strict=True):
        entry = out.setdefault(unit, UnitCounts())
        entry.records += count
        if reason is not None:
            reasons = entry.filtered if reason_filter(reason) else entry.reasons  # the chain's reasons
            reasons[reason] = reasons.get(reason, 0) + count
            entry.malformed += count if reason in MALFORMED_REASONS else 0
    return out


def unit_prefixes(units: list[SourceUnit]) -> list[str]:
    return [f"{u.source_index:03d}|{u.uri}|" for u in units]


class Finalize:
    """Block callable: global line numbers, `doc_key` and `order` from (unit, part, line)."""

    def __init__(self, units: list[SourceUnit], part_offsets: np.ndarray) -> None:
        prefixes = unit_prefixes(units)
        self.prefixes = pa.array(prefixes, pa.string())
        rank = np.empty(len(prefixes), np.int64)
        rank[np.argsort(np.array(prefixes, dtype=object), kind="stable")] = np.arange(len(prefixes))
        self.rank = rank
        self.part_offsets = part_offsets

    def __call__(self, table: pa.Table) -> pa.Table:
        unit = table["unit_index"].to_numpy()
        line = table["line"].to_numpy() + self.part_offsets[table["pid"].to_numpy()]
        order = (self.rank[unit] << _LINE_BITS) | line
        number = pc.utf8_lpad(pc.cast(pa.array(line), pa.string()), 10, "0")
        doc_key = pc.binary_join_element_wise(pc.take(self.prefixes, pa.array(unit)), number, "")
        table = table.drop_columns(["pid", "line"])
        return table.append_column("order", pa.array(order)).append_column("doc_key", doc_key)
