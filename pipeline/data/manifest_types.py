"""Typed view of a dataset manifest (DESIGN.md s.3), shared by the data stage and the trainer.

The JSON stays the storage format (readable by anything); these dataclasses are what code passes
around, so a missing or misspelled field fails when the manifest is read, not deep inside a run.
The data stage validates every manifest through `Manifest.from_dict` before publishing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SPLITS = ("train", "val", "heldout")


@dataclass(frozen=True)
class ShardEntry:
    uri: str
    key: str
    rows: int
    tokens: int
    bytes: int
    sha256: str
    docs: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardEntry:
        return cls(**{k: raw[k] for k in ("uri", "key", "rows", "tokens", "bytes", "sha256")}, docs=raw.get("docs"))


@dataclass(frozen=True)
class TokenizerInfo:
    uri: str
    key: str
    sha256: str
    vocab_size: int
    eos_id: int
    pad_id: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TokenizerInfo:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Manifest:
    dataset: str
    version: int
    parent_version: int | None
    seq_len: int
    dtype: str  # token dtype of the shards: uint16 or uint32
    tokenizer: TokenizerInfo
    shards: dict[str, tuple[ShardEntry, ...]]
    raw: dict[str, Any]  # the whole JSON (stats, sources, lineage) for reports

    @property
    def block_len(self) -> int:
        """Tokens per stored row: inputs are `[:-1]`, labels `[1:]`."""
        return self.seq_len + 1

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def split(self, name: str) -> tuple[ShardEntry, ...]:
        return self.shards.get(name, ())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        try:
            dtype = raw["dtype"]
            if dtype not in ("uint16", "uint32"):
                raise ValueError(f"dtype {dtype!r}")
            return cls(
                dataset=raw["dataset"],
                version=int(raw["version"]),
                parent_version=raw.get("parent_version"),
                seq_len=int(raw["seq_len"]),
                dtype=dtype,
                tokenizer=TokenizerInfo.from_dict(raw["tokenizer"]),
                shards={s: tuple(ShardEntry.from_dict(e) for e in raw["shards"].get(s, [])) for s in raw["shards"]},
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed manifest ({type(error).__name__}: {error})") from None
