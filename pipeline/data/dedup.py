"""Global deduplication: exact (content hash) and near (MinHash + LSH, datasketch).

Runs on the driver over compact fingerprints (16-byte hash + MinHash signature per document), in
`doc_key` order, so the decision is deterministic and global across the whole dataset, not per
Ray block. The index of everything already published is persisted per version (Arrow) so an
incremental refresh deduplicates new documents against old ones.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from datasketch import LeanMinHash, MinHash, MinHashLSH

from ..config.data import DedupConfig


class DedupIndex:
    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        self.exact: set[bytes] = set()
        self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm) if config.near else None
        self.signatures: dict[bytes, np.ndarray] = {}
        self.added: list[tuple[bytes, np.ndarray | None]] = []  # this run's kept docs, for persistence

    def _minhash(self, sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(MinHash(num_perm=self.config.num_perm, seed=1, hashvalues=sig, scheme="affine32"))

    def _add(self, digest: bytes, sig: np.ndarray | None) -> None:
        self.exact.add(digest)
        if self.lsh is not None and sig is not None and digest not in self.signatures:
            self.signatures[digest] = sig
            self.lsh.insert(digest, self._minhash(sig))

    def decide(self, digest: bytes, sig) -> str:
        """'keep', 'exact' or 'near'; kept documents join the index."""
        sig = None if sig is None else np.asarray(sig, dtype=np.uint32)
        if self.config.exact and digest in self.exact:
            return "exact"
        if self.lsh is not None and sig is not None:
            for other in self.lsh.query(self._minhash(sig)):
                # LSH gives candidates; confirm with the signatures' estimated Jaccard similarity.
                if np.mean(self.signatures[other] == sig) >= self.config.threshold:
                    return "near"
        self._add(digest, sig)
        self.added.append((digest, sig))
        return "keep"

    def load(self, data: bytes) -> None:
        """Add a persisted index (output of `serialize`) of an earlier version."""
        table = pa.ipc.open_file(io.BytesIO(data)).read_all()
        hashes = table.column("hash").to_pylist()
        sigs = table.column("minhash").to_pylist()
        for digest, sig in zip(hashes, sigs, strict=True):
            self._add(digest, None if sig is None else np.asarray(sig, dtype=np.uint32))

    def serialize(self) -> bytes:
        """This run's kept documents as an Arrow IPC file (hash, minhash)."""
        table = pa.table(
            {
                "hash": pa.array([d for d, _ in self.added], type=pa.binary(16)),
                "minhash": pa.array(
                    [None if s is None else s.tolist() for _, s in self.added], type=pa.list_(pa.uint32())
                ),
            }
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()
