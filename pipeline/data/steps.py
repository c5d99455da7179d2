"""Per-document batch steps on Arrow tables: normalize -> quality filter -> fingerprint.

Each step is `step(table: pa.Table, config) -> pa.Table`, kept apart from the executor (the read
tasks run them on the records of one read piece; tests call them directly). Rejected rows
(`reject` set) pass through untouched so they can be quarantined later. Work is done per batch:
Arrow compute for lengths and CRLF, one pass over each text for its content hash, and numpy over
the word bytes of the whole batch for MinHash shingle hashes and permutations (`minhash.py`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DataConfig, DedupConfig
from .minhash import batch_signatures

_WORD = re.compile(r"\w+", re.UNICODE)


def _live_mask(table: pa.Table) -> np.ndarray:
    return np.asarray(pc.is_null(table["reject"]).to_numpy(zero_copy_only=False), dtype=bool)


def normalize(table: pa.Table, config: DataConfig) -> pa.Table:
    """CRLF -> LF (Arrow) and Unicode normalization (NFC/NFKC, Python's unicodedata: the reference)."""
    text = pc.replace_substring(table["text"], "\r\n", "\n")
    if config.normalize != "none":
        form = config.normalize
        text = pa.array([None if t is None else unicodedata.normalize(form, t) for t in text.to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("text"), "text", text)


def quality_filter(table: pa.Table, config: DataConfig) -> pa.Table:
    """Mark empty, too short and too long documents (lengths in code points, like `len(str)`)."""
    live = _live_mask(table)
    texts = table["text"].to_pylist()
    # str.strip's notion of whitespace (Python's), not utf8proc's: the same rows as before.
    stripped = np.array([len(t.strip()) if t is not None else -1 for t in texts], dtype=np.int64)
    length = np.asarray(pc.fill_null(pc.utf8_length(table["text"]), -1).to_numpy(zero_copy_only=False))
    limits = config.filters
    # Later reasons win, as the previous per-reason assignments did.
    for reason, mask in (
        ("empty", stripped == 0),
        ("too_short", (stripped > 0) & (stripped < limits.min_chars)),
        ("too_long", length > limits.max_chars),
    ):
        mask = mask & live
        if mask.any():
            reject = pc.if_else(pa.array(mask), pa.scalar(reason, pa.string()), table["reject"])
            table = table.set_column(table.schema.get_field_index("reject"), "reject", reject)
    return table


def content_hash(text: str) -> bytes:
    """128-bit content hash used for exact dedup and the split."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def shingles(text: str, size: int) -> list[bytes]:
    """Word n-gram shingles of the lower-cased text: the one-document reference definition of what
    `minhash.batch_signatures` hashes (as byte spans of a whole batch)."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)]


def fingerprint_docs(table: pa.Table, config: DataConfig) -> pa.Table:
    """Add `hash` (16 bytes), `n_bytes` (UTF-8 size) and, when near-dedup is on, `minhash`."""
    live = _live_mask(table)
    texts = table["text"].to_pylist()
    hashes: list[bytes | None] = [None] * len(texts)
    n_bytes = np.zeros(len(texts), np.int64)
    for i in np.flatnonzero(live):
        encoded = texts[i].encode("utf-8", "surrogatepass")
        hashes[i] = hashlib.sha256(encoded).digest()[:16]
        n_bytes[i] = len(encoded)
    table = table.append_column("hash", pa.array(hashes, pa.binary(16)))
    table = table.append_column("n_bytes", pa.array(n_bytes))
    live_texts = [texts[i] for i in np.flatnonzero(live)] if config.dedup.near else []
    return table.append_column("minhash", _minhash_column(live_texts, live, config.dedup))


def _minhash_column(live_texts: list[str], live: np.ndarray, dedup: DedupConfig) -> pa.Array:
    list_type = pa.list_(pa.uint32(), dedup.num_perm)
    if not dedup.near or not live.any():
        return pa.nulls(len(live), list_type)
    signatures = batch_signatures(live_texts, dedup.num_perm, dedup.shingle)  # (live docs, num_perm) uint32
    full = np.zeros((len(live), dedup.num_perm), np.uint32)
    full[live] = signatures
    values = pa.array(full.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, dedup.num_perm, mask=pa.array(~live))


def signature(text: str, num_perm: int, shingle: int) -> np.ndarray:
    """MinHash signature (uint32 x num_perm) of one document's word shingles."""
    return batch_signatures([text], num_perm, shingle)[0]


def clean(table: pa.Table, config: DataConfig) -> pa.Table:
    """normalize -> quality_filter -> fingerprint_docs."""
    for step in (normalize, quality_filter, fingerprint_docs):
        table = step(table, config)
    return table
