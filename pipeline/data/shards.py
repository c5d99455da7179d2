"""Arrow IPC shard format (DESIGN.md s.3): packing, writing with sha256, verified reading.

A training shard has one row per block: `input_ids: fixed_size_list<uint16|uint32>[seq_len + 1]`
(inputs are `[:-1]`, labels `[1:]`) and `valid: int32`, the number of real tokens in the row.
Every row is full (`valid == seq_len + 1`) except possibly the last row of a shard, which holds
the packing remainder padded with PAD: this keeps every token of every kept document exactly once
instead of silently dropping the tail (loaders mask labels past `valid`).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa

from ..errors import UserError
from ..records import ShardEntry
from ..storage import ObjectStore

ROWS_PER_BATCH = 1024  # record-batch size: the unit a loader can read without the whole file


class CorruptShardError(UserError):
    """A shard's bytes do not match the sha256 recorded in the manifest."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def block_schema(block_len: int, dtype: np.dtype) -> pa.Schema:
    return pa.schema(
        [
            pa.field("input_ids", pa.list_(pa.from_numpy_dtype(dtype), block_len)),
            pa.field("valid", pa.int32()),
        ]
    )


def pack(token_lists: list[np.ndarray], eos_id: int, pad_id: int, block_len: int, dtype: np.dtype):
    """Concatenate documents (EOS after each) and cut into blocks; returns (blocks, valid)."""
    lengths = np.array([len(t) for t in token_lists], np.int64)
    flat = np.concatenate([np.asarray(t, np.int64) for t in token_lists]) if token_lists else np.zeros(0, np.int64)
    return pack_flat(flat, lengths, eos_id, pad_id, block_len, dtype)


def pack_flat(flat: np.ndarray, lengths: np.ndarray, eos_id: int, pad_id: int, block_len: int, dtype: np.dtype):
    """`pack` on documents given as one flat id array and their lengths (no per-document loop).

    Works in the shard's own dtype, in place in the output: a fresh worker pays for every page it
    touches (~1 s for the int64 temporaries of 9M tokens on a 2-core VM)."""
    lengths = np.asarray(lengths, np.int64)
    n_stream = len(flat) + len(lengths)
    if n_stream % block_len == 1:
        # A tail row holding one token (always the closing EOS) has no target: every label would be
        # masked. Such a row is never written; the token was no target of any other row either.
        n_stream -= 1
    rows = -(-n_stream // block_len)
    padded = np.full(rows * block_len, pad_id, dtype=dtype)
    is_token = np.ones(len(flat) + len(lengths), bool)
    is_token[np.cumsum(lengths + 1) - 1] = False  # where each document's EOS goes
    stream = padded[:n_stream]
    stream[:] = eos_id
    stream[is_token[:n_stream]] = flat[: int(is_token[:n_stream].sum())]
    valid = np.full(rows, block_len, dtype=np.int32)
    if rows and n_stream % block_len:
        valid[-1] = n_stream % block_len
    return padded.reshape(rows, block_len), valid


def to_ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=ROWS_PER_BATCH):
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def blocks_table(blocks: np.ndarray, valid: np.ndarray) -> pa.Table:
    block_len = blocks.shape[1]
    flat = pa.array(blocks.reshape(-1))
    ids = pa.FixedSizeListArray.from_arrays(flat, block_len)
    return pa.Table.from_arrays([ids, pa.array(valid, pa.int32())], schema=block_schema(block_len, blocks.dtype))


def write_shard(store: ObjectStore, key: str, table: pa.Table, tokens: int) -> dict:
    """Write one immutable shard; returns its manifest entry."""
    data = to_ipc_bytes(table)
    store.write(key, data)
    return {
        "uri": store.uri(key),
        "key": key,
        "rows": table.num_rows,
        "tokens": int(tokens),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def read_shard(store: ObjectStore, entry: ShardEntry, verify: bool = True) -> pa.Table:
    """Read a shard; with `verify`, check its sha256 against the manifest first."""
    data = store.read(entry.key)
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256 or len(data) != entry.bytes:
            raise CorruptShardError(
                f"shard {entry.uri} is corrupt: sha256 {digest[:12]}... != manifest {entry.sha256[:12]}..."
            )
    return pa.ipc.open_file(io.BytesIO(data)).read_all()
