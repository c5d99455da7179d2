"""Split, weight, tokenize, and pack+write: the Ray Data callables after deduplication."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pyarrow as pa
from tokenizers import Tokenizer

from ..config.data import DataConfig
from ..storage import StorageSettings, open_store
from .manifest_types import SPLITS  # noqa: F401  (re-exported: stage.py imports it from here)
from .shards import blocks_table, pack, token_dtype, write_shard


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


class TokenizeBatch:
    """map_batches callable: adds split, group and token ids; replicates rows by source weight."""

    def __init__(self, config: DataConfig, tokenizer_json: str, groups: dict[str, int]) -> None:
        self.config = config
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.groups = groups

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.select(["doc_key", "source_index", "label", "text", "hash"]).to_pylist():
            digest = row["hash"]
            weight = self.config.sources[row["source_index"]].weight
            split = assign_split(digest, self.config)
            count = copies(digest, weight) if split == "train" else 1  # never duplicate eval data
            group = int.from_bytes(digest[8:12], "big") % self.groups[split]
            for k in range(count):
                rows.append((f"{row['doc_key']}#{k}", row["label"], row["text"], split, f"{split}/{group:05d}"))
        names = ["doc_key", "label", "text", "split", "group"]
        columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
        encodings = self.tokenizer.encode_batch(columns["text"], add_special_tokens=False) if rows else []
        return pa.table(
            {
                **{name: pa.array(values, pa.string()) for name, values in columns.items()},
                "tokens": pa.array([np.asarray(e.ids, dtype=np.uint32) for e in encodings], pa.list_(pa.uint32())),
                "n_tokens": pa.array([len(e.ids) for e in encodings], pa.int64()),
            }
        )


class PackWriteGroup:
    """map_groups callable: one group -> its shard(s) written to storage -> one row per shard."""

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

    def __call__(self, group: pd.DataFrame) -> pd.DataFrame:
        store = open_store(self.root, self.settings)
        group = group.sort_values("doc_key", kind="stable").reset_index(drop=True)
        split, index = group["group"].iloc[0].split("/")
        entries = []
        if split == "heldout":
            table = pa.table({"doc_key": group["doc_key"], "label": group["label"], "text": group["text"]})
            key = f"{self.shard_prefix}/heldout/part-{index}.arrow"
            entry = write_shard(store, key, table, tokens=int(group["n_tokens"].sum()))
            entries.append({**entry, "split": split, "docs": len(group)})
        else:
            block_len = self.config.seq_len + 1
            blocks, valid = pack(list(group["tokens"]), self.eos_id, self.pad_id, block_len, self.dtype)
            rows_per_shard = max(1, self.config.shard_bytes // (block_len * self.dtype.itemsize))
            parts = max(1, -(-len(blocks) // rows_per_shard))
            for part in range(parts):
                sl = slice(part * rows_per_shard, (part + 1) * rows_per_shard)
                suffix = f"-{part:03d}" if parts > 1 else ""
                key = f"{self.shard_prefix}/{split}/part-{index}{suffix}.arrow"
                entry = write_shard(store, key, blocks_table(blocks[sl], valid[sl]), tokens=int(valid[sl].sum()))
                entries.append({**entry, "split": split, "docs": len(group) if part == 0 else 0})
        return pd.DataFrame(entries)
