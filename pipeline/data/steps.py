"""Per-document batch steps, each `step(batch: pandas.DataFrame, config) -> DataFrame`.

Kept apart from the executor (Ray Data `map_batches` runs them; tests call them directly).
Rejected rows (`reject` set) pass through untouched so they can be quarantined later.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
from datasketch import MinHash

from ..config.data import DataConfig

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(batch: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Unicode normalization (NFC/NFKC) and CRLF -> LF, for rows not rejected."""
    live = batch["reject"].isna()
    form = config.normalize

    def clean(text: str) -> str:
        text = text.replace("\r\n", "\n")
        return unicodedata.normalize(form, text) if form != "none" else text

    batch.loc[live, "text"] = batch.loc[live, "text"].map(clean)
    return batch


def quality_filter(batch: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Mark empty, too short and too long documents."""
    live = batch["reject"].isna()
    stripped_len = batch.loc[live, "text"].map(lambda t: len(t.strip()))
    length = batch.loc[live, "text"].map(len)
    empty = stripped_len[stripped_len == 0].index
    short = stripped_len[(stripped_len > 0) & (stripped_len < config.filters.min_chars)].index
    long = length[length > config.filters.max_chars].index
    batch.loc[empty, "reject"] = "empty"
    batch.loc[short, "reject"] = "too_short"
    batch.loc[long, "reject"] = "too_long"
    return batch


def content_hash(text: str) -> bytes:
    """128-bit content hash used for exact dedup and the split."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def shingles(text: str, size: int) -> list[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)]


def signature(text: str, num_perm: int, shingle: int) -> np.ndarray:
    """MinHash signature (uint32 x num_perm) of the document's word shingles."""
    minhash = MinHash(num_perm=num_perm, seed=1, scheme="affine32")
    minhash.update_batch(shingles(text, shingle))
    return minhash.hashvalues.astype(np.uint32)


def fingerprint_docs(batch: pd.DataFrame, config: DataConfig) -> pd.DataFrame:
    """Add `hash` (16 bytes) and, when near-dedup is on, `minhash` (list of uint32)."""
    live = batch["reject"].isna()
    batch["hash"] = None
    batch.loc[live, "hash"] = batch.loc[live, "text"].map(content_hash)
    batch["minhash"] = None
    if config.dedup.near:
        batch.loc[live, "minhash"] = batch.loc[live, "text"].map(
            lambda t: signature(t, config.dedup.num_perm, config.dedup.shingle)
        )
    return batch


# Explicit Arrow types: Ray would otherwise infer per block, and blocks whose optional columns are
# all null would disagree with the others.
RECORD_SCHEMA = pa.schema(
    [
        ("doc_key", pa.string()),
        ("unit", pa.string()),
        ("source_index", pa.int32()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("reject", pa.string()),
        ("raw", pa.binary()),
        ("hash", pa.binary(16)),
        ("minhash", pa.list_(pa.uint32())),
    ]
)


def _none_if_missing(value):
    if value is None or isinstance(value, (np.ndarray, bytes, str, list)):
        return value
    return None if pd.isna(value) else value


def to_record_table(batch: pd.DataFrame) -> pa.Table:
    columns = {}
    for field in RECORD_SCHEMA:
        values = (
            [_none_if_missing(v) for v in batch[field.name].tolist()] if field.name in batch else [None] * len(batch)
        )
        if field.name == "minhash":
            values = [None if v is None else np.asarray(v, dtype=np.uint32) for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=RECORD_SCHEMA)


class CleanBatch:
    """Ray Data `map_batches` callable: normalize -> filter -> fingerprint, as a typed Arrow table."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        batch = batch.reset_index(drop=True)
        for step in (normalize, quality_filter, fingerprint_docs):
            batch = step(batch, self.config)
        return to_record_table(batch)
