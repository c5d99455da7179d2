"""Per-document batch steps on Arrow tables: normalize -> filter chain -> fingerprint.

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
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.data import DataConfig, DedupConfig
from .filters.chain import chain_for
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


def apply_filters(table: pa.Table, config: DataConfig, counts: Counter | None = None) -> pa.Table:
    """The filter chain of `config.filters` (`filters/chain.py`): rejects set per filter and reason,
    texts rewritten (redaction), the language columns added; counters added to `counts`."""
    return chain_for(config).apply(table, counts)


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


def clean(table: pa.Table, config: DataConfig, counts: Counter | None = None) -> pa.Table:
    """normalize -> filter chain -> fingerprint_docs."""
    table = apply_filters(normalize(table, config), config, counts)
    return fingerprint_docs(table, config)
