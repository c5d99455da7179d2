"""Held-out documents of a dataset version, read back verified, each with a stable content hash.

The data stage writes held-out documents as raw text (`shards["heldout"]`: Arrow IPC files with
`doc_key`, `label`, `text`). A document's identity here is `doc_hash`: the hex of the data stage's
own content hash (`pipeline.data.steps.content_hash`: sha256 of the normalized UTF-8 text, first 16
bytes), the same hash that assigned it to the held-out split and deduplicated it. Everything the
suite builders select or split is decided by hashes of `doc_hash`, never by listing order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from ..data.shards import read_shard
from ..data.steps import content_hash
from ..errors import UserError
from ..records import DatasetVersion
from ..storage import ObjectStore


@dataclass(frozen=True)
class HeldoutDoc:
    doc_hash: str
    doc_key: str
    label: str | None
    text: str

    @cached_property
    def line_starts(self) -> list[int]:
        """Character offsets where a line begins (0 and after every newline)."""
        starts = [0]
        position = self.text.find("\n")
        while position != -1:
            if position + 1 < len(self.text):
                starts.append(position + 1)
            position = self.text.find("\n", position + 1)
        return starts


def unit(salt: str, *parts: object) -> float:
    """A number in [0, 1) fixed by `salt` and `parts`: the deterministic 'random' draw of the builders."""
    text = "\x1f".join([salt, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def draw(salt: str, *parts: object) -> int:
    """A 64-bit integer fixed by `salt` and `parts`."""
    text = "\x1f".join([salt, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def doc_hash(text: str) -> str:
    return content_hash(text).hex()


def read_heldout(store: ObjectStore, manifest: DatasetVersion) -> list[HeldoutDoc]:
    """Every held-out document of `manifest` (sha256-verified shards), sorted by `doc_hash`.

    Raises UserError when the version has none (heldout_fraction 0, or too few documents).
    """
    entries = manifest.split("heldout")
    docs: dict[str, HeldoutDoc] = {}
    for entry in entries:
        table = read_shard(store, entry)  # verifies sha256 and size against the manifest
        for key, label, text in zip(
            table.column("doc_key").to_pylist(),
            table.column("label").to_pylist(),
            table.column("text").to_pylist(),
            strict=True,
        ):
            if text and text.strip():
                digest = doc_hash(text)
                docs.setdefault(digest, HeldoutDoc(digest, key, label, text))
    if not docs:
        raise UserError(
            f"dataset {manifest.dataset!r} v{manifest.version} has no held-out documents: "
            "raise data.split.heldout_fraction above 0 and rerun the data stage"
        )
    return [docs[h] for h in sorted(docs)]
