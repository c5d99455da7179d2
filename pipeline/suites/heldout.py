"""Held-out documents of a dataset version, streamed back verified, each with a stable content hash.

The data stage writes held-out documents as raw text (`shards["heldout"]`: Arrow IPC files with
`doc_key`, `label`, `text`). A document's identity here is `doc_hash`: the hex of the data stage's
own content hash (`pipeline.data.steps.content_hash`: sha256 of the normalized UTF-8 text, first 16
bytes), the same hash that assigned it to the held-out split and deduplicated it. Everything the
suite builders select or split is decided by hashes of `doc_hash`, never by listing order.

`HeldoutSplit` streams: one shard at a time is downloaded (sha256-verified while it streams) to a
local temporary file and memory-mapped, and turned into documents `BATCH_ROWS` rows at a time, so a
reader holds one shard's pages and one batch of Python strings, whatever the split's size; only the
documents' hashes (to drop repeated texts) grow with their number.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa

from ..data.shards import CorruptShardError
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


BATCH_ROWS = 1024  # documents turned into Python strings at once


class HeldoutSplit:
    """The held-out documents of a version, streamed as many times as a builder needs (`documents`).

    The first pass drops repeated texts by hash and notes where they were, and leaves `hashes`:
    every document's hash, sorted. Later passes skip those places and keep no state of their own.
    """

    def __init__(self, store: ObjectStore, manifest: DatasetVersion) -> None:
        self.store, self.manifest = store, manifest
        self.hashes: list[str] = []
        self._repeats: set[tuple[int, int]] | None = None  # (shard, row) of the repeats, after a pass

    def documents(self) -> Iterator[HeldoutDoc]:
        """Every held-out document once (the first of repeated texts), in shard order.

        Raises UserError when the version has none (heldout_fraction 0, or too few documents),
        after the last shard; a corrupt shard raises `CorruptShardError` naming it.
        """
        first = self._repeats is None
        seen: set[str] = set()
        repeats: set[tuple[int, int]] = set() if first else self._repeats
        with tempfile.TemporaryDirectory(prefix="sora-heldout-") as tmp:
            for shard, entry in enumerate(self.manifest.split("heldout")):
                path = Path(tmp) / f"{shard}.arrow"
                try:
                    self.store.download_file(entry.key, path, entry.sha256, entry.bytes)
                except ValueError as error:
                    raise CorruptShardError(f"shard {entry.uri} is corrupt: {error}") from None
                try:
                    for row, doc in _documents(path):
                        if first:
                            if doc.doc_hash in seen:
                                repeats.add((shard, row))
                                continue
                            seen.add(doc.doc_hash)
                        elif (shard, row) in repeats:
                            continue
                        yield doc
                finally:
                    path.unlink()
        if first:
            if not seen:
                raise UserError(
                    f"dataset {self.manifest.dataset!r} v{self.manifest.version} has no held-out documents: "
                    "raise data.split.heldout_fraction above 0 and rerun the data stage"
                )
            self.hashes, self._repeats = sorted(seen), repeats


def _documents(path: Path) -> Iterator[tuple[int, HeldoutDoc]]:
    """(row, document) of every non-blank row of the Arrow file at `path`, memory-mapped."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        row = 0
        for b in range(reader.num_record_batches):
            batch = reader.get_batch(b)
            for start in range(0, batch.num_rows, BATCH_ROWS):
                rows = batch.slice(start, BATCH_ROWS)
                for key, label, text in zip(
                    rows.column("doc_key").to_pylist(),
                    rows.column("label").to_pylist(),
                    rows.column("text").to_pylist(),
                    strict=True,
                ):
                    if text and text.strip():
                        yield row, HeldoutDoc(doc_hash(text), key, label, text)
                    row += 1


def read_heldout(store: ObjectStore, manifest: DatasetVersion) -> list[HeldoutDoc]:
    """Every held-out document of `manifest`, sorted by `doc_hash`: all of them in memory, for tests
    and small tools (the suite builders stream `HeldoutSplit` instead)."""
    return sorted(HeldoutSplit(store, manifest).documents(), key=lambda d: d.doc_hash)
