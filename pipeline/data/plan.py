"""Read planning and the read + clean tasks.

Units (files) are packed into pieces of about `total / blocks` bytes: many small files per task,
and a large uncompressed jsonl (parquet) file split into byte ranges (row groups) that separate
tasks read in parallel. Each task reads its piece, runs the per-document steps and returns the
records plus small per-file counts; the driver only ever holds per-file and per-part numbers.

Document order is fixed by `doc_key` (`source|uri|line`): `order` is the same order as an int64
(file rank << 34 | line), computed once the line count of every byte range is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DataConfig
from ..storage import StorageSettings
from .readers import MALFORMED_REASONS, _store, read_unit, splittable
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
    """Records of one file read in a run: all, malformed, and per reject reason."""

    records: int = 0
    malformed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: UnitCounts) -> None:
        self.records += other.records
        self.malformed += other.malformed
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count


@dataclass
class PieceMeta:
    """What a read task reports besides its records: line starts per part (`pid`), counts per
    file (`unit_index`) and the UTF-8 bytes of its live records."""

    lines: dict[int, int]
    units: dict[int, UnitCounts]
    live_bytes: int


def read_piece(
    piece: list[UnitPart], config: DataConfig, settings: StorageSettings, finalize: Finalize | None = None
) -> tuple[pa.Table, PieceMeta]:
    """Read and clean one piece; returns (records, counts) where counts has per-part line starts,
    per-file (records, malformed, by reason) numbers and the UTF-8 bytes of the live records.
    With `finalize` (when no line of the piece needs another piece's line count), the records are
    numbered here too."""
    tables, lines = [], {}
    for part in piece:
        table, starts = read_unit(part, config, settings)
        tables.append(table)
        lines[part.pid] = starts
    table = clean(pa.concat_tables(tables), config)
    live_bytes = int(pc.sum(table["n_bytes"]).as_py() or 0)  # 0 for rejected records
    meta = PieceMeta(lines, unit_counts(table), live_bytes)
    return (finalize(table) if finalize is not None else table), meta


def unit_counts(table: pa.Table) -> dict[int, UnitCounts]:
    """Per file: records, malformed records and reasons (for error rates and stats)."""
    frame = table.select(["unit_index", "reject"]).group_by(["unit_index", "reject"]).aggregate([([], "count_all")])
    out: dict[int, UnitCounts] = {}
    for unit, reason, count in zip(*(frame[c].to_pylist() for c in ("unit_index", "reject", "count_all")), strict=True):
        entry = out.setdefault(unit, UnitCounts())
        entry.records += count
        if reason is not None:
            entry.reasons[reason] = entry.reasons.get(reason, 0) + count
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
