"""The shuffled order of one dataset's training samples, read a window of shards at a time.

Epoch e of a source visits its shards in the order `permutation(PCG64([seed, source, e, 0]))`;
consecutive groups of `window` shards form the epoch's windows, and the samples of window w are
visited in the order `permutation(PCG64([seed, source, e, 1, w]))` of that window's rows. So a
node needs only the shards of the current window (plus what it prefetches), and a rank holds the
shard order of one epoch (one integer per shard) and the permutation of one window's rows, never
a permutation of all samples: memory does not grow with the number of samples.

The trade-off (README "Shuffle quality"): two samples can be neighbours in the order only if
their shards fall in the same window, so the window should span more shards than any run of
correlated shards the data stage writes (it shuffles documents before packing, so a window of a
few shards already mixes sources).

Positions index the source's infinite sequence: position m is sample `m % N` of epoch `m // N`
(N samples per epoch). A sample's id is its row number in the manifest's shard order, so ids
are stable across epochs and runs, and `(shard, row)` follows from it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..records import ShardEntry


class SourceOrder:
    """Windowed shuffle of one source's `train` shards; a pure function of (seed, source, manifest)."""

    def __init__(self, shards: tuple[ShardEntry, ...], seed: int, source: int, window: int) -> None:
        if not shards:
            raise ValueError("the dataset has no training shards")
        self.shards = shards
        self.rows = np.asarray([entry.rows for entry in shards], dtype=np.int64)
        self.first_row = np.concatenate([[0], np.cumsum(self.rows)[:-1]])  # the id of each shard's row 0
        self.num_samples = int(self.rows.sum())
        if self.num_samples == 0:
            raise ValueError("the dataset has no training samples")
        self.seed, self.source, self.window = seed, source, max(1, window)
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.num_samples

    @property
    def num_windows(self) -> int:
        return -(-len(self.shards) // self.window)

    # -- epoch and window structure ------------------------------------------------------------------
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, first position of each window) of `epoch`; the last two epochs are kept."""
        if epoch not in self._epochs:
            rng = np.random.Generator(np.random.PCG64([self.seed, self.source, epoch, 0]))
            order = rng.permutation(len(self.shards))
            ends = np.cumsum(self.rows[order])
            window_starts = np.concatenate([[0], ends[self.window - 1 :: self.window]])[: self.num_windows]
            self._epochs[epoch] = (order, window_starts)
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def window_shards(self, epoch: int, window: int) -> np.ndarray:
        """Manifest indices of the shards of one window, in the epoch's shard order."""
        order, _ = self._epoch(epoch)
        return order[window * self.window : (window + 1) * self.window]

    def _window_permutation(self, epoch: int, window: int) -> np.ndarray:
        key = (epoch, window)
        if key not in self._windows:
            size = int(self.rows[self.window_shards(epoch, window)].sum())
            rng = np.random.Generator(np.random.PCG64([self.seed, self.source, epoch, 1, window]))
            dtype = np.int32 if size < 2**31 else np.int64
            self._windows[key] = rng.permutation(size).astype(dtype, copy=False)
            while len(self._windows) > 3:  # one step may straddle a window (and an epoch) boundary
                self._windows.popitem(last=False)
        return self._windows[key]

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, window) that holds `position` of the infinite sequence."""
        epoch, offset = divmod(int(position), self.num_samples)
        _, starts = self._epoch(epoch)
        return epoch, int(np.searchsorted(starts, offset, side="right") - 1)

    # -- positions -> sample ids ---------------------------------------------------------------------
    def ids(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids (row numbers in manifest order) at these positions of the sequence."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.num_samples)
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            in_epoch = np.flatnonzero(epochs == epoch)
            _, starts = self._epoch(epoch)
            windows = np.searchsorted(starts, offsets[in_epoch], side="right") - 1
            for window in np.unique(windows).tolist():
                chosen = in_epoch[windows == window]
                local = self._window_permutation(epoch, window)[offsets[chosen] - starts[window]].astype(np.int64)
                shards = self.window_shards(epoch, window)
                ends = np.cumsum(self.rows[shards])
                which = np.searchsorted(ends, local, side="right")
                before = np.concatenate([[0], ends])[which]
                out[chosen] = self.first_row[shards[which]] + local - before
        return out

    def shard_of(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(manifest shard index, row in shard) of each sample id."""
        shard = np.searchsorted(self.first_row, sample_ids, side="right") - 1
        return shard, np.asarray(sample_ids) - self.first_row[shard]

    def shards_from(self, position: int, count: int) -> list[int]:
        """Manifest indices of the shards needed from `position` on, window by window, at least
        `count` of them (all of them for a smaller source): what a node must hold now plus what
        it should fetch ahead."""
        epoch, window = self.locate(position)
        needed: dict[int, None] = {}  # ordered, de-duplicated (a small source wraps into the next epoch)
        for _ in range(self.num_windows + 1):
            needed.update(dict.fromkeys(self.window_shards(epoch, window).tolist()))
            if len(needed) >= count:
                break
            epoch, window = (epoch + 1, 0) if window + 1 == self.num_windows else (epoch, window + 1)
        return list(needed)
