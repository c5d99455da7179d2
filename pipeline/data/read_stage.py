"""Read stage executor and the small aggregates taken over kept documents.

`read_records` runs one Ray task per planned piece (read + clean + fingerprint), which stores its
records on the build's scratch area as blocks of bounded size (`data.read_block_bytes`, so a large
compressed file or dataset never sits whole in one task or one object) and asks Ray for
`data.task_memory`; then it numbers the lines of split files and adds `doc_key`/`order` in a task
per block (`blocks.py`). The driver receives per-part line counts, per-file record counts and where
each part's records lie among the blocks, never per-document rows.
`split_bytes_and_sample` reduces the kept documents to per-split sums and to the tokenizer's
training sample, whose size is bounded by `tokenizer.sample_bytes`, not by the corpus.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..config.data import DataConfig
from ..storage import StorageSettings
from . import placement
from .blocks import Blocks, run, write_table
from .exchange import Scratch
from .plan import _LINE_BITS, Finalize, PieceMeta, UnitCounts, plan_pieces, read_piece
from .sources import SourceUnit, UnitPart
from .tokenize_pack import SPLITS, split_codes


@dataclass
class ReadStats:
    """Counts of a run's read: per file (`units`, by position in the run's unit list), rejected
    records by reason, records read, live (not rejected) records and their UTF-8 bytes."""

    units: dict[int, UnitCounts]
    rejected: dict[str, int]
    docs_read: int
    live: int
    live_bytes: int
    filter_counts: dict[str, int] = field(default_factory=dict)  # the filter chain's `<filter>/<counter>`

    def source_bytes(self, units: list[SourceUnit]) -> int:
        """Bytes of the files that yielded at least one record."""
        return int(sum(units[i].size for i, counts in self.units.items() if counts.records))


def read_records(
    units: list[SourceUnit], data: DataConfig, settings: StorageSettings, blocks: int, scratch: Scratch, track=None
) -> tuple[RecordBlocks, ReadStats]:
    """(records, counts) for this run's units: the record blocks of every read piece (one or more
    per piece, each of at most `data.read_block_bytes` of input), stored on `scratch`.
    `track(done, total)` shows the read tasks' progress."""
    pieces, n_parts = plan_pieces(units, blocks, settings)
    # Lines of whole files and of first byte ranges need no offset: those pieces are numbered by
    # their read task. Only later ranges of a split file wait for the line counts of earlier ones.
    unshifted = Finalize(units, np.zeros(n_parts, np.int64))
    later = [any(_later_range(part) for part in piece) for piece in pieces]
    prefix = f"{scratch.prefix}/read"
    # The per-file numbering is one shared argument (stored once), not pickled into every task.
    calls = [(piece, i, not shifted) for i, (piece, shifted) in enumerate(zip(pieces, later, strict=True))]
    shared = (unshifted, data, settings, scratch.root, prefix)
    outputs = run(_read_piece, "read_piece", calls, shared, track, **read_task_options(data))
    metas = [meta for _, meta in outputs]

    part_unit = np.zeros(n_parts, np.int64)
    part_lines = np.zeros(n_parts, np.int64)
    for piece in pieces:
        for part in piece:
            part_unit[part.pid] = part.index
    for meta in metas:
        for pid, lines in meta.lines.items():
            part_lines[pid] = lines
    # Offsets of each part's first line within its file: the line starts of the file's earlier parts.
    offsets = np.zeros(n_parts, np.int64)
    for pid in range(1, n_parts):
        if part_unit[pid] == part_unit[pid - 1]:
            offsets[pid] = offsets[pid - 1] + part_lines[pid - 1]

    counts = _read_stats(metas)
    finalize = Finalize(units, offsets)

    def order(pid: int, line: int) -> int:
        return int((finalize.rank[part_unit[pid]] << _LINE_BITS) | (offsets[pid] + line))

    keys, shifted, segments, dropped = [], [], [], {}
    for (written, meta), late in zip(outputs, later, strict=True):
        first = len(keys)
        keys.extend(written)
        shifted.extend([late] * len(written))
        segments.extend((order(pid, line), first + block) for block, pid, line in meta.segments)
        for pid, start, end in meta.dropped:  # an unreadable part's records handed out earlier
            span = (order(pid, start), order(pid, end))
            for block in {first + b for b, p, _ in meta.segments if p == pid}:
                dropped.setdefault(block, []).append(span)
    if any(shifted):
        renumber = [i for i, needs in enumerate(shifted) if needs]
        numbered = Blocks([keys[i] for i in renumber], scratch).map(_finalize, "numbered", finalize)
        keys = _replace(keys, renumber, numbered.keys)
    if dropped:
        trim = sorted(dropped)
        trimmed = Blocks([keys[i] for i in trim], scratch).map(_drop_orders, "trimmed", each=[dropped[i] for i in trim])
        keys = _replace(keys, trim, trimmed.keys)
    first_orders = np.array([o for o, _ in segments], np.int64)
    segment_block = np.array([b for _, b in segments], np.int64)
    return RecordBlocks(keys, scratch, BlockRouter(first_orders, segment_block)), counts


def _read_piece(
    piece: list[UnitPart],
    index: int,
    numbered: bool,
    finalize: Finalize,
    data: DataConfig,
    settings,
    root: str,
    prefix: str,
) -> tuple[list[str], PieceMeta]:
    """One read task: `plan.read_piece`'s blocks stored as they come (so the task holds one block
    at a time), then its counts. `numbered`: its lines need no other piece's count (`finalize`)."""
    keys, meta = [], None
    for out in read_piece(piece, data, settings, finalize if numbered else None):
        if isinstance(out, PieceMeta):
            meta = out
        else:
            keys.append(write_table(root, settings, f"{prefix}/piece-{index:06d}-{len(keys):05d}.arrow", out))
    return keys, meta


def read_task_options(data: DataConfig) -> dict:
    """Ray options of the read tasks: the data stage's placement and a memory request."""
    return {**placement.task_options(), "memory": int(data.task_memory)}


class BlockRouter:
    """`order` -> the index of the record block that holds it, from the first order (file rank << 34
    | line) of each part's records in each block: per-block state, so routing a row needs no
    per-document table. A part's records lie in one or more blocks that cover consecutive line
    ranges, and parts of one file cover consecutive line ranges too, so the block holding an order
    is the one of the last entry whose first order is not above it."""

    def __init__(self, first_orders: np.ndarray, blocks: np.ndarray) -> None:
        order = np.argsort(first_orders, kind="stable")
        self.first_orders, self.blocks = first_orders[order], blocks[order]

    def __call__(self, orders: np.ndarray) -> np.ndarray:
        return self.blocks[np.searchsorted(self.first_orders, orders, side="right") - 1]


class RecordBlocks(Blocks):
    """The read records: stored record tables, one or more blocks per read piece, with the router
    from `order` to block."""

    def __init__(self, keys: list[str], scratch: Scratch, router: BlockRouter) -> None:
        super().__init__(keys, scratch)
        self.router = router


def _read_stats(metas: list) -> ReadStats:
    """The read tasks' per-file counts summed into the run's `ReadStats`."""
    per_unit: dict[int, UnitCounts] = {}
    for meta in metas:
        for unit, entry in meta.units.items():
            per_unit.setdefault(unit, UnitCounts()).add(entry)
    rejected: Counter = Counter()
    for entry in per_unit.values():
        rejected.update(entry.reasons)
    for meta in metas:
        rejected.update(meta.rejected)
    docs_read = sum(e.records for e in per_unit.values())
    live_bytes = sum(meta.live_bytes for meta in metas)
    filter_counts: Counter = Counter()
    for meta in metas:
        filter_counts.update(meta.filter_counts)
    return ReadStats(
        per_unit,
        rejected,
        docs_read,
        docs_read - sum(rejected.values()),
        live_bytes,
        dict(sorted(filter_counts.items())),
    )


def _later_range(part: UnitPart) -> bool:
    """A byte range (row groups) of a split file other than its first."""
    return bool(part.part) and part.part[0] != 0


def _finalize(table: pa.Table, finalize: Finalize) -> pa.Table:
    return finalize(table)


def _replace(keys: list, at: list[int], new: list) -> list:
    """`keys` with the blocks at positions `at` replaced by `new`, in order."""
    out = list(keys)
    for i, key in zip(at, new, strict=True):
        out[i] = key
    return out


def _drop_orders(table: pa.Table, spans: list[tuple[int, int]]) -> pa.Table:
    """`table` without the records whose order lies in one of `spans` ([start, end) each)."""
    order = table["order"].to_numpy()
    keep = np.ones(len(order), dtype=bool)
    for start, end in spans:
        keep &= (order < start) | (order >= end)
    return table if keep.all() else table.filter(pa.array(keep))


def _split_sums(batch: pa.Table, config: DataConfig) -> pa.Table:
    codes = split_codes(batch["hash"].to_pylist(), config)
    sums = np.bincount(codes, weights=batch["n_bytes"].to_numpy(), minlength=len(SPLITS))
    return pa.table({"split": list(SPLITS), "n_bytes": sums.astype(np.int64)})


def _sample_key(digest: bytes) -> bytes:
    return hashlib.sha256(digest).digest()


def _sums_and_candidates(batch: pa.Table, config: DataConfig, threshold: int) -> tuple[pa.Table, pa.Table]:
    """Per-split text bytes of a block, and its training documents whose sample key is at most
    `threshold` (hash, n_bytes, text)."""
    hashes = batch["hash"].to_pylist()
    keys = [int.from_bytes(_sample_key(d)[:8], "big") for d in hashes]
    wanted = (split_codes(hashes, config) == 0) & (np.array(keys, dtype=np.float64) <= threshold)
    return _split_sums(batch, config), batch.select(["hash", "n_bytes", "text"]).filter(pa.array(wanted))


def split_bytes_and_sample(
    kept: Blocks, live_bytes: int, config: DataConfig, want_sample: bool
) -> tuple[dict[str, int], list[tuple[bytes, str]]]:
    """Text bytes of kept documents per split (sizes the shard groups) and, with `want_sample`, the
    (hash, text) of the tokenizer's training sample: training documents in sha256(hash) order up to
    `sample_bytes`, whatever their blocks.

    One round of tasks does both. Only documents whose key falls under a threshold reach the driver:
    about twice the sample, sized from the live bytes read (an upper bound of what is kept), so the
    driver's share does not grow with the corpus. When dedup removed so much that the candidates
    fall short of the sample, the threshold grows and the round repeats. The sample is exact either
    way: every document with a smaller key than a chosen one is a candidate."""
    sample_bytes = config.tokenizer.sample_bytes
    train_share = max(0.05, 1.0 - config.split.val_fraction - config.split.heldout_fraction)
    fraction = min(1.0, 2.0 * sample_bytes / max(1.0, live_bytes * train_share)) if want_sample else 0.0
    while True:
        threshold = 2**64 if fraction >= 1 else int(fraction * 2**64) if fraction > 0 else -1
        results = kept.collect(_sums_and_candidates, config, threshold)
        split_bytes = {split: 0 for split in SPLITS}
        for sums, _ in results:
            for split, n_bytes in zip(sums["split"].to_pylist(), sums["n_bytes"].to_pylist(), strict=True):
                split_bytes[split] += int(n_bytes)
        if not want_sample:
            return split_bytes, []
        rows = pa.concat_tables([candidates for _, candidates in results]).to_pylist()
        rows.sort(key=lambda r: _sample_key(r["hash"]))
        chosen, total = [], 0
        for row in rows:
            chosen.append((row["hash"], row["text"]))
            total += row["n_bytes"]
            if total >= sample_bytes:
                break
        if total >= sample_bytes or fraction >= 1:
            return split_bytes, chosen
        fraction = min(1.0, fraction * 4)
