"""Read stage executor and the small aggregates taken over kept documents.

`read_records` runs one Ray task per planned piece (read + clean + fingerprint), then numbers the
lines of split files and adds `doc_key`/`order` in a task per block (`blocks.py`). The driver
receives per-part line counts and per-file record counts, never per-document rows.
`split_bytes_and_sample` reduces the kept documents to per-split sums and to the tokenizer's
training sample, whose size is bounded by `tokenizer.sample_bytes`, not by the corpus.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..config.data import DataConfig
from ..storage import StorageSettings
from .blocks import Blocks
from .plan import _LINE_BITS, Finalize, UnitCounts, plan_pieces, read_piece
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

    def source_bytes(self, units: list[SourceUnit]) -> int:
        """Bytes of the files that yielded at least one record."""
        return int(sum(units[i].size for i, counts in self.units.items() if counts.records))


def read_records(
    units: list[SourceUnit], data: DataConfig, settings: StorageSettings, blocks: int, track=None
) -> tuple[RecordBlocks, ReadStats]:
    """(records, counts) for this run's units: one block of records per read piece. `track(refs,
    what)` waits for the read tasks showing progress (`Reporter.track`)."""
    import ray

    pieces, n_parts = plan_pieces(units, blocks, settings)
    task = ray.remote(num_returns=2)(read_piece)
    data_ref, settings_ref = ray.put(data), ray.put(settings)
    # Lines of whole files and of first byte ranges need no offset: those pieces are numbered by
    # their read task. Only later ranges of a split file wait for the line counts of earlier ones.
    unshifted = ray.put(Finalize(units, np.zeros(n_parts, np.int64)))
    later = [any(_later_range(part) for part in piece) for piece in pieces]
    refs = [
        task.remote(piece, data_ref, settings_ref, None if shifted else unshifted)
        for piece, shifted in zip(pieces, later, strict=True)
    ]
    tables = [table for table, _ in refs]
    if track is not None:
        track([meta for _, meta in refs], "read + clean")
    metas = ray.get([meta for _, meta in refs])

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
    if any(later):
        shifted = Blocks([t for t, late in zip(tables, later, strict=True) if late]).map(_finalize, finalize)
        numbered = iter(shifted.refs)
        tables = [next(numbered) if late else t for t, late in zip(tables, later, strict=True)]
    part_block = np.zeros(n_parts, np.int64)
    for block, piece in enumerate(pieces):
        for part in piece:
            part_block[part.pid] = block
    first_orders = (finalize.rank[part_unit] << _LINE_BITS) | offsets
    return RecordBlocks(tables, BlockRouter(first_orders, part_block)), counts


class BlockRouter:
    """`order` -> the index of the record block that holds it, from each part's first order
    (file rank << 34 | first line): per-file state, so routing a row needs no per-document table.
    Parts of one file cover consecutive line ranges, so the part holding an order is the last one
    whose first order is not above it."""

    def __init__(self, first_orders: np.ndarray, part_block: np.ndarray) -> None:
        order = np.argsort(first_orders, kind="stable")
        self.first_orders, self.part_block = first_orders[order], part_block[order]

    def __call__(self, orders: np.ndarray) -> np.ndarray:
        return self.part_block[np.searchsorted(self.first_orders, orders, side="right") - 1]


class RecordBlocks(Blocks):
    """The read records, one block per read piece, with the router from `order` to block."""

    def __init__(self, refs: list, router: BlockRouter) -> None:
        super().__init__(refs)
        self.router = router


def _read_stats(metas: list) -> ReadStats:
    """The read tasks' per-file counts summed into the run's `ReadStats`."""
    per_unit: dict[int, UnitCounts] = {}
    for meta in metas:
        for unit, entry in meta.units.items():
            per_unit.setdefault(unit, UnitCounts()).add(entry)
    rejected: dict[str, int] = {}
    for entry in per_unit.values():
        for reason, count in entry.reasons.items():
            rejected[reason] = rejected.get(reason, 0) + count
    docs_read = sum(e.records for e in per_unit.values())
    live_bytes = sum(meta.live_bytes for meta in metas)
    return ReadStats(per_unit, rejected, docs_read, docs_read - sum(rejected.values()), live_bytes)


def _later_range(part: UnitPart) -> bool:
    """A byte range (row groups) of a split file other than its first."""
    return bool(part.part) and part.part[0] != 0


def _finalize(table: pa.Table, finalize: Finalize) -> pa.Table:
    return finalize(table)


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
