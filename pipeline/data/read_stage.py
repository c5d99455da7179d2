"""Read stage executor and the small aggregates taken over kept documents.

`read_records` runs one Ray task per planned piece (read + clean + fingerprint), then numbers the
lines of split files and adds `doc_key`/`order` in a task per block (`blocks.py`). The driver receives per-part
line counts and per-file record counts, never per-document rows. `kept_split_bytes` and
`tokenizer_sample` reduce the kept documents to per-split sums and to the tokenizer's training
sample, whose size is bounded by `tokenizer.sample_bytes`, not by the corpus.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DataConfig
from ..storage import StorageSettings
from .blocks import Blocks
from .plan import Finalize, plan_pieces, read_piece
from .tokenize_pack import SPLITS, split_codes


def read_records(units: list[dict], data: DataConfig, settings: StorageSettings, blocks: int) -> tuple[Blocks, dict]:
    """(records, counts) for this run's units: one block of records per read piece."""
    import ray

    pieces, n_parts = plan_pieces(units, blocks, settings)
    task = ray.remote(num_returns=2)(read_piece)
    data_ref, settings_ref = ray.put(data), ray.put(settings)
    refs = [task.remote(piece, data_ref, settings_ref) for piece in pieces]
    tables = [table for table, _ in refs]
    metas = ray.get([meta for _, meta in refs])

    part_unit = np.zeros(n_parts, np.int64)
    part_lines = np.zeros(n_parts, np.int64)
    for piece in pieces:
        for part in piece:
            part_unit[part["pid"]] = part["index"]
    for meta in metas:
        for pid, lines in meta["lines"].items():
            part_lines[pid] = lines
    # Offsets of each part's first line within its file: the line starts of the file's earlier parts.
    offsets = np.zeros(n_parts, np.int64)
    for pid in range(1, n_parts):
        if part_unit[pid] == part_unit[pid - 1]:
            offsets[pid] = offsets[pid - 1] + part_lines[pid - 1]

    per_unit: dict[int, dict] = {}
    for meta in metas:
        for unit, entry in meta["units"].items():
            total = per_unit.setdefault(unit, {"records": 0, "malformed": 0, "reasons": {}})
            total["records"] += entry["records"]
            total["malformed"] += entry["malformed"]
            for reason, count in entry["reasons"].items():
                total["reasons"][reason] = total["reasons"].get(reason, 0) + count
    rejected: dict[str, int] = {}
    for entry in per_unit.values():
        for reason, count in entry["reasons"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    docs_read = sum(e["records"] for e in per_unit.values())
    counts = {
        "units": per_unit,
        "rejected": rejected,
        "docs_read": docs_read,
        "live": docs_read - sum(rejected.values()),
    }

    return Blocks(tables).map(_finalize, Finalize(units, offsets)), counts


def _finalize(table: pa.Table, finalize: Finalize) -> pa.Table:
    return finalize(table)


def _split_sums(batch: pa.Table, config: DataConfig) -> pa.Table:
    codes = split_codes(batch["hash"].to_pylist(), config)
    sums = np.bincount(codes, weights=batch["n_bytes"].to_numpy(), minlength=len(SPLITS))
    return pa.table({"split": list(SPLITS), "n_bytes": sums.astype(np.int64)})


def kept_split_bytes(kept: Blocks, config: DataConfig) -> dict[str, int]:
    """Text bytes of kept documents per split (sizes the shard groups)."""
    out = {split: 0 for split in SPLITS}
    for table in kept.collect(_split_sums, config):
        for split, n_bytes in zip(table["split"].to_pylist(), table["n_bytes"].to_pylist(), strict=True):
            out[split] += int(n_bytes)
    return out


def _sample_key(digest: bytes) -> bytes:
    return hashlib.sha256(digest).digest()


def _sample_candidates(batch: pa.Table, config: DataConfig, threshold: int) -> pa.Table:
    hashes = batch["hash"].to_pylist()
    keys = [int.from_bytes(_sample_key(d)[:8], "big") for d in hashes]
    wanted = (split_codes(hashes, config) == 0) & (np.array(keys, dtype=np.float64) <= threshold)
    return batch.select(["hash", "n_bytes"]).filter(pa.array(wanted))


def tokenizer_sample(kept: Blocks, train_bytes: int, config: DataConfig) -> list[tuple[bytes, str]]:
    """(hash, text) of the tokenizer's training sample: training documents in sha256(hash) order up
    to `sample_bytes`. Only documents whose key falls under a threshold reach the driver (about twice
    the sample); the threshold grows until the sample is complete."""
    sample_bytes = config.tokenizer.sample_bytes
    fraction = min(1.0, 2.0 * sample_bytes / max(1, train_bytes))
    while True:
        threshold = 2**64 if fraction >= 1 else int(fraction * 2**64)
        rows = pa.concat_tables(kept.collect(_sample_candidates, config, threshold)).to_pylist()
        rows.sort(key=lambda r: _sample_key(r["hash"]))
        chosen, total = [], 0
        for row in rows:
            chosen.append(row["hash"])
            total += row["n_bytes"]
            if total >= sample_bytes:
                break
        if total >= sample_bytes or fraction >= 1:
            break
        fraction = min(1.0, fraction * 4)
    wanted = pa.array(chosen, pa.binary(16))
    texts = pa.concat_tables(kept.collect(_sample_texts, wanted))
    return list(zip(texts["hash"].to_pylist(), texts["text"].to_pylist(), strict=True))


def _sample_texts(batch: pa.Table, wanted: pa.Array) -> pa.Table:
    return batch.select(["hash", "text"]).filter(pc.is_in(batch["hash"], value_set=wanted))
