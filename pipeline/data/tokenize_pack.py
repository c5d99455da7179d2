"""Split, weight, tokenize, and pack+write: the block functions after deduplication."""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from ..config.data import DataConfig
from ..records import SPLITS
from ..storage import StorageSettings, open_store
from .blocks import split_by
from .shards import blocks_table, pack_flat, token_dtype, write_shard


def _unit_interval(salt: str, digest: bytes) -> float:
    return int.from_bytes(hashlib.sha256(salt.encode() + digest).digest()[:8], "big") / 2**64


def assign_split(digest: bytes, config: DataConfig) -> str:
    """Stable split by content hash: the same document always lands in the same split."""
    u = _unit_interval(config.split.salt, digest)
    if u < config.split.val_fraction:
        return "val"
    if u < config.split.val_fraction + config.split.heldout_fraction:
        return "heldout"
    return "train"


def copies(digest: bytes, weight: float) -> int:
    """Mixing weight -> number of copies of a document (deterministic by content hash)."""
    whole, fraction = int(math.floor(weight)), weight - math.floor(weight)
    return whole + (1 if _unit_interval("weight", digest) < fraction else 0)


def _unit_intervals(salt: str, hashes: list[bytes]) -> np.ndarray:
    prefix = salt.encode()
    return (
        np.array([int.from_bytes(hashlib.sha256(prefix + d).digest()[:8], "big") for d in hashes], dtype=np.float64)
        / 2**64
    )


def split_codes(hashes: list[bytes], config: DataConfig) -> np.ndarray:
    """`assign_split` for a batch: 0 train, 1 val, 2 heldout (index into SPLITS)."""
    u = _unit_intervals(config.split.salt, hashes)
    val, held = config.split.val_fraction, config.split.val_fraction + config.split.heldout_fraction
    return np.where(u < val, 1, np.where(u < held, 2, 0)).astype(np.int8)


def token_lists(encodings, dtype=np.uint32) -> pa.Array:
    """Token ids of `encode_batch` results as one Arrow list array (one flat buffer, no per-row arrays)."""
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    offsets = np.zeros(len(encodings) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype, int(offsets[-1]))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))


ENCODE_BYTES = 4 << 20  # text encoded at once by a tokenize task (`TokenizeBatch._encode`)

TOKENIZED_SCHEMA = pa.schema(
    [
        ("doc_key", pa.string()),
        ("label", pa.string()),
        ("text", pa.string()),
        ("split", pa.string()),
        ("group", pa.string()),
        ("tokens", pa.large_list(pa.uint32())),
        ("n_tokens", pa.int64()),
    ]
)


class TokenizeBatch:
    """Block callable: adds split, group and token ids; replicates rows by source weight.

    Each document is tokenized once (`encode_batch_fast`, in Rust); weighted copies share its ids.
    Only heldout rows keep their text (they are written as text); the others carry token ids.
    """

    def __init__(self, config: DataConfig, tokenizer_json: str, groups: dict[str, int]) -> None:
        self.config = config
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.groups = np.array([groups[s] for s in SPLITS], np.int64)
        self.weights = np.array([s.weight for s in config.sources], np.float64)

    def _encode(self, texts: pa.ChunkedArray) -> pa.Array:
        """Token ids of every text, encoded `ENCODE_BYTES` of text at a time: the tokenizer's
        `Encoding` objects cost ~50 bytes per token (offsets, masks), ~60x the text, so a block is
        never encoded at once (a 64 MB block would take ~4 GB)."""
        lengths = pc.binary_length(texts).to_numpy(zero_copy_only=False) if len(texts) else np.zeros(0, np.int64)
        bounds = np.searchsorted(np.cumsum(lengths), np.arange(ENCODE_BYTES, int(lengths.sum()), ENCODE_BYTES))
        edges = np.unique(np.r_[0, bounds, len(texts)])
        pieces = []
        for start, end in zip(edges[:-1], edges[1:], strict=True):
            chunk = texts[int(start) : int(end)].to_pylist()
            pieces.append(token_lists(self.tokenizer.encode_batch_fast(chunk, add_special_tokens=False)))
        return pa.concat_arrays(pieces) if pieces else token_lists([])

    def __call__(self, batch: pa.Table) -> pa.Table:
        hashes = batch["hash"].to_pylist()
        n = len(hashes)
        split = split_codes(hashes, self.config)
        weight = self.weights[batch["source_index"].to_numpy()]
        whole, fraction = np.floor(weight), weight - np.floor(weight)
        count = (whole + (_unit_intervals("weight", hashes) < fraction)).astype(np.int64)
        count = np.where(split == 0, count, 1)  # never duplicate eval data
        raw = np.frombuffer(batch["hash"].combine_chunks().buffers()[1], np.uint8, n * 16).reshape(n, 16)
        bucket = raw[:, 8:12].astype(np.int64) @ np.array([1 << 24, 1 << 16, 1 << 8, 1], np.int64)
        group = bucket % self.groups[split]
        tokens = self._encode(batch["text"])
        rows = np.repeat(np.arange(n), count)
        copy = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
        split_names = np.array(SPLITS, dtype=object)[split[rows]]
        group_keys = [f"{s}/{g:05d}" for s, g in zip(split_names.tolist(), group[rows].tolist(), strict=True)]
        take = pa.array(rows)
        doc_key = pc.binary_join_element_wise(
            pc.take(batch["doc_key"], take), pc.cast(pa.array(copy), pa.string()), "#"
        )
        heldout = pa.array(split[rows] == 2)
        return pa.table(
            {
                "doc_key": doc_key,
                "label": pc.take(batch["label"], take),
                "text": pc.if_else(heldout, pc.take(batch["text"], take), pa.scalar(None, pa.string())),
                "split": pa.array(split_names.tolist(), pa.string()),
                "group": pa.array(group_keys, pa.string()),
                "tokens": pc.take(tokens, take),
                "n_tokens": pc.list_value_length(pc.take(tokens, take)).cast(pa.int64()),
            }
        ).cast(TOKENIZED_SCHEMA)


_TOKENIZERS: dict[str, TokenizeBatch] = {}


def tokenize_batch(batch: pa.Table, config: DataConfig, tokenizer_json: str, groups: dict[str, int]) -> pa.Table:
    """`TokenizeBatch` as a plain task function: Ray reuses its task workers, so the tokenizer is
    built once per worker process (cached by content) without starting dedicated actors."""
    key = hashlib.sha256((tokenizer_json + repr(sorted(groups.items())) + config.model_dump_json()).encode()).digest()
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = TokenizeBatch(config, tokenizer_json, groups)
    return _TOKENIZERS[key](batch)


def tokenize_partitions(
    batch: pa.Table, config: DataConfig, tokenizer_json: str, groups: dict[str, int], parts: int
) -> list[pa.Table]:
    """Shuffle map side: a block tokenized, its rows split into `parts` tables by shard group
    (every row of a group goes to the same partition, whichever block it came from)."""
    table = tokenize_batch(batch, config, tokenizer_json, groups)
    if not table.num_rows:
        return [table] * parts
    names = pc.unique(table["group"])
    part_of = {}
    for name in names.to_pylist():
        split, index = name.split("/")
        part_of[name] = (SPLITS.index(split) * 7919 + int(index)) % parts
    part = np.array([part_of[n] for n in names.to_pylist()], np.int64)[
        pc.index_in(table["group"], value_set=names).to_numpy()
    ]
    return split_by(table, part, parts)


def write_groups(table: pa.Table | None, writer: PackWriteGroup) -> pa.Table:
    """Shuffle reduce side: every shard group of one partition packed and written; one row per shard."""
    if table is None or not table.num_rows:
        return ENTRY_SCHEMA.empty_table()
    # One sort of the indices by (group, doc_key); each group's rows are then taken in doc_key
    # order, one group at a time (a copy of the whole partition would double its memory).
    order = pc.sort_indices(table, [("group", "ascending"), ("doc_key", "ascending")]).to_numpy()
    groups = table["group"].take(pa.array(order)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], len(groups)]
    return pa.concat_tables([writer(table.take(pa.array(order[a:b]))) for a, b in zip(starts, ends, strict=True)])


class PackWriteGroup:
    """One shard group (all its rows) -> its shard(s) written to storage -> one row per shard."""

    def __init__(
        self,
        config: DataConfig,
        settings: StorageSettings,
        root: str,
        shard_prefix: str,
        vocab_size: int,
        eos_id: int,
        pad_id: int,
    ) -> None:
        self.config, self.settings, self.root = config, settings, root
        self.shard_prefix = shard_prefix
        self.dtype = token_dtype(vocab_size)
        self.eos_id, self.pad_id = eos_id, pad_id

    def __call__(self, group: pa.Table) -> pa.Table:
        """`group`: the group's rows sorted by doc_key (unique: a stable order)."""
        store = open_store(self.root, self.settings)
        split, index = group["group"][0].as_py().split("/")
        entries = []
        if split == "heldout":
            table = pa.table({"doc_key": group["doc_key"], "label": group["label"], "text": group["text"]})
            key = f"{self.shard_prefix}/heldout/part-{index}.arrow"
            entry = write_shard(store, key, table, tokens=int(pc.sum(group["n_tokens"]).as_py()))
            entries.append({**entry, "split": split, "docs": group.num_rows})
        else:
            block_len = self.config.seq_len + 1
            tokens = group["tokens"].combine_chunks()
            offsets = tokens.offsets.to_numpy()
            blocks, valid = pack_flat(
                tokens.values.to_numpy()[offsets[0] : offsets[-1]],
                np.diff(offsets),
                self.eos_id,
                self.pad_id,
                block_len,
                self.dtype,
            )
            rows_per_shard = max(1, self.config.shard_bytes // (block_len * self.dtype.itemsize))
            parts = max(1, -(-len(blocks) // rows_per_shard))
            for part in range(parts):
                sl = slice(part * rows_per_shard, (part + 1) * rows_per_shard)
                suffix = f"-{part:03d}" if parts > 1 else ""
                key = f"{self.shard_prefix}/{split}/part-{index}{suffix}.arrow"
                entry = write_shard(store, key, blocks_table(blocks[sl], valid[sl]), tokens=int(valid[sl].sum()))
                entries.append({**entry, "split": split, "docs": group.num_rows if part == 0 else 0})
        return pa.Table.from_pylist(entries, schema=ENTRY_SCHEMA)


ENTRY_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("key", pa.string()),
        ("rows", pa.int64()),
        ("tokens", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("split", pa.string()),
        ("docs", pa.int64()),
    ]
)
