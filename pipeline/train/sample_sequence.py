"""The global training sequence of one dataset or a weighted mixture: position -> sample id.

A pure function of (seed, manifests, weights, window): positions go to a dataset by weight
(mixture_order.py), then to a sample of that dataset by its windowed shuffle (shard_order.py).
A sample id is the dataset's offset (the samples of the datasets before it in the mixture) plus
its row number in the dataset's manifest order, so ids are stable across epochs, runs and world
sizes, and `locate` turns one into (dataset, shard, row) without reading anything.
"""

from __future__ import annotations

import numpy as np

from ..records import DatasetVersion
from .mixture_order import MixtureOrder
from .shard_order import SourceOrder


class SampleSequence:
    def __init__(self, sources: list[tuple[DatasetVersion, float]], seed: int, window: int) -> None:
        self.names = [manifest.dataset for manifest, _ in sources]
        self.orders = [SourceOrder(manifest.split("train"), seed, s, window) for s, (manifest, _) in enumerate(sources)]
        self.mixture = MixtureOrder([w for _, w in sources], seed) if len(sources) > 1 else None
        self.offsets = np.concatenate([[0], np.cumsum([len(o) for o in self.orders])[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(sum(len(o) for o in self.orders))

    def _split(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if self.mixture is None:
            return np.zeros(count, dtype=np.int64), np.arange(start, start + count, dtype=np.int64)
        return self.mixture.split(start, count)

    def ids(self, start: int, count: int) -> np.ndarray:
        """Global sample ids at positions start .. start+count-1 of the sequence."""
        source, position = self._split(start, count)
        out = np.empty(count, dtype=np.int64)
        for s in np.unique(source).tolist():
            mine = source == s
            out[mine] = self.offsets[s] + self.orders[s].ids(position[mine])
        return out

    def drawn(self, total: int) -> np.ndarray:
        """Samples drawn from each source among the first `total` positions."""
        if self.mixture is None:
            return np.asarray([total], dtype=np.int64)
        return self.mixture.drawn(total)

    def first_repeat(self) -> tuple[int, int]:
        """(position, source): the first position at which some source starts its second epoch."""
        if self.mixture is None:
            return len(self.orders[0]), 0
        return min((self.mixture.first_position_of(s, len(o)), s) for s, o in enumerate(self.orders))

    def describe_exhausted(self) -> str:
        _, s = self.first_repeat()
        return f"{self.names[s]} ran out after {len(self.orders[s])} samples (train.on_exhausted: stop)"

    def progress(self, consumed: int) -> dict:
        """Samples drawn and epochs begun per dataset after `consumed` positions (a pure function)."""
        drawn = self.drawn(consumed)
        return {
            "datasets": {
                name: {"samples": int(n), "epoch": int(n // len(order))}
                for name, n, order in zip(self.names, drawn, self.orders, strict=True)
            }
        }

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source, shard, row in shard) of global sample ids."""
        ids = np.asarray(ids, dtype=np.int64)
        source = np.searchsorted(self.offsets, ids, side="right") - 1
        shard, row = np.empty_like(ids), np.empty_like(ids)
        for s in np.unique(source).tolist():
            mine = source == s
            shard[mine], row[mine] = self.orders[s].shard_of(ids[mine] - self.offsets[s])
        return source, shard, row
