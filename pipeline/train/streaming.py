"""A run's training samples, streamed from object storage through the node's shard cache.

    stream = DataStream(store, sources, settings, cache)    # one or more (manifest, weight)
    ids = stream.ids(consumed, global_batch)                 # pure function of the position
    stream.seek(consumed, my_ids)                            # hold what this step reads, fetch ahead
    inputs, labels = stream.batch(my_ids[:micro])

Positions of the global sequence go to a source by weight (mixture_order.py), then to a sample
of that source by its windowed shuffle (shard_order.py). A sample id is the source's offset (the
samples of the sources before it) plus its row number in the source's manifest order, so ids are
stable across epochs, runs and world sizes.

`seek` releases the shards that no longer matter, holds (downloading if needed) those the step
reads, and hands the rest of the look-ahead (the current and the next windows, `prefetch`
shards beyond the window) to a background thread. So a step waits for a download only when the
prefetch did not keep up, and the first step waits only for the shards its own samples are in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from ..records import DatasetVersion
from ..storage import ObjectStore
from .mixture_order import MixtureOrder
from .sample_sequence import SampleSequence
from .shard_cache import Held, ShardCache


@dataclass(frozen=True)
class StreamSettings:
    seed: int
    window: int  # shards per shuffle window
    prefetch: int  # shards fetched ahead beyond the current window
    on_exhausted: str = "repeat"  # or "stop": the run ends before any dataset starts a second epoch


class OpenShard:
    """A held shard, memory-mapped: rows are read without copying the file."""

    def __init__(self, held: Held) -> None:
        self.held = held
        reader = pa.ipc.open_file(pa.memory_map(str(held.path)))
        self.blocks, self.valid, starts = [], [], [0]
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            ids = batch.column("input_ids")
            self.blocks.append(ids.values.to_numpy(zero_copy_only=True).reshape(-1, ids.type.list_size))
            self.valid.append(batch.column("valid").to_numpy())
            starts.append(starts[-1] + batch.num_rows)
        self.starts = np.asarray(starts, dtype=np.int64)

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blocks int64 [n, seq_len+1], valid [n]) of these row numbers (copies: the shard may go)."""
        which = np.searchsorted(self.starts, rows, side="right") - 1
        blocks = np.empty((len(rows), self.blocks[0].shape[1]), dtype=np.int64)
        valid = np.empty(len(rows), dtype=np.int64)
        for b in np.unique(which).tolist():
            mine = which == b
            local = rows[mine] - self.starts[b]
            blocks[mine], valid[mine] = self.blocks[b][local], self.valid[b][local]
        return blocks, valid

    def close(self) -> None:
        self.blocks = self.valid = []  # drop the views into the mapping before the lock goes
        self.held.release()


class ShardReader:
    """Rows of the shards of several sources, each shard held in the node cache while open."""

    def __init__(self, store: ObjectStore, splits: list[tuple], cache: ShardCache) -> None:
        self.store, self.splits, self.cache = store, splits, cache
        self.open: dict[tuple[int, int], OpenShard] = {}
        self.lock = threading.Lock()

    def hold(self, key: tuple[int, int], wait: bool = True) -> OpenShard | None:
        """The open shard (held in the node cache); None when `wait` is False and another process
        is downloading it."""
        with self.lock:
            shard = self.open.get(key)
        if shard is None:
            source, index = key
            held = self.cache.hold(self.store, self.splits[source][index], wait=wait)
            if held is None:
                return None
            fresh = OpenShard(held)
            with self.lock:
                shard = self.open.setdefault(key, fresh)
            if shard is not fresh:
                fresh.close()  # the prefetcher opened it meanwhile
        return shard

    def keep_only(self, wanted: set[tuple[int, int]]) -> None:
        with self.lock:
            stale = [key for key in self.open if key not in wanted]
            closing = [self.open.pop(key) for key in stale]
        for shard in closing:
            shard.close()

    def close(self) -> None:
        self.keep_only(set())


class DataStream(SampleSequence):
    """The training sequence (sample_sequence.py) with its shards streamed through the node cache."""

    def __init__(
        self,
        store: ObjectStore,
        sources: list[tuple[DatasetVersion, float]],
        settings: StreamSettings,
        cache: ShardCache,
    ) -> None:
        super().__init__(sources, settings.seed, settings.window)
        self.settings = settings
        self.ahead = settings.window + settings.prefetch
        self.reader = ShardReader(store, [o.shards for o in self.orders], cache)
        self.cache = cache
        self._wanted: list[tuple[tuple[int, int], bool]] = []  # (shard key, wait for another downloader)
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._prefetch, name="sora-shard-prefetch", daemon=True)
        self._thread.start()

    def stop_position(self) -> int | None:
        """Where the run must stop (on_exhausted: stop), or None (sources repeat by epochs)."""
        return self.first_repeat()[0] if self.settings.on_exhausted == "stop" else None

    # -- the shards ----------------------------------------------------------------------------------
    def seek(self, position: int, ids: np.ndarray) -> None:
        """About to read `ids` at `position`: keep and hold what they need, fetch ahead the rest."""
        source, shard, _ = self.locate(ids)
        now = list(dict.fromkeys(zip(source.tolist(), shard.tolist(), strict=True)))
        drawn = self.drawn(position)
        later = [(s, j) for s, order in enumerate(self.orders) for j in order.shards_from(int(drawn[s]), self.ahead)]
        wanted = list(dict.fromkeys(now + later))
        self.reader.keep_only(set(wanted))
        holding = set(now)
        with self._changed:
            self._wanted = [(key, False) for key in wanted if key not in holding]
            self._changed.notify()
        for key in now:
            self.reader.hold(key)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of causal language modelling for these sample ids."""
        from .loader import to_tensors

        return to_tensors(*self.rows(ids))

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blocks int64 [n, seq_len+1], valid [n]) of these sample ids, in their order."""
        source, shard, row = self.locate(ids)
        blocks, valid = None, np.empty(len(ids), dtype=np.int64)
        for key in dict.fromkeys(zip(source.tolist(), shard.tolist(), strict=True)):
            mine = np.flatnonzero((source == key[0]) & (shard == key[1]))
            got, got_valid = self.reader.hold(key).rows(row[mine])
            if blocks is None:
                blocks = np.empty((len(ids), got.shape[1]), dtype=np.int64)
            blocks[mine], valid[mine] = got, got_valid
        return blocks, valid

    def _prefetch(self) -> None:
        """Background: hold the look-ahead shards in order (downloads run here, off the step).

        A shard another rank of the node is downloading is passed over and taken after the
        others (then it is usually there), so the ranks of a node download different shards in
        parallel instead of queueing behind one."""
        while True:
            with self._changed:
                while not self._stopped and not self._wanted:
                    self._changed.wait()
                if self._stopped:
                    return
                key, wait = self._wanted.pop(0)
            try:
                if self.reader.hold(key, wait=wait) is None:
                    with self._changed:
                        self._wanted.append((key, True))
            except Exception:  # noqa: BLE001 - the step that needs the shard fetches it again and raises
                continue

    def close(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join(timeout=30)
        self.reader.close()


class ValidationSamples:
    """The validation samples of one dataset or a mixture: position k of the (unshuffled) val
    splits, interleaved by the same weights as training; as many positions as every source can
    fill. Read once (the trainer keeps the batches), then `close` releases the shards."""

    def __init__(
        self, store: ObjectStore, sources: list[tuple[DatasetVersion, float]], seed: int, cache: ShardCache
    ) -> None:
        splits = [manifest.split("val") for manifest, _ in sources]
        self.sizes = [sum(entry.rows for entry in split) for split in splits]
        self.first_rows = [np.concatenate([[0], np.cumsum([e.rows for e in split])[:-1]]) for split in splits]
        self.mixture = MixtureOrder([w for _, w in sources], seed) if len(sources) > 1 else None
        if self.mixture is None:
            self.length = self.sizes[0]
        else:  # stop before the first position that some source could not fill
            self.length = min(self.mixture.first_position_of(s, n) for s, n in enumerate(self.sizes))
        self.reader = ShardReader(store, splits, cache)

    def __len__(self) -> int:
        return int(self.length)

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from .loader import to_tensors

        positions = np.asarray(positions, dtype=np.int64)
        if self.mixture is None:
            source, index = np.zeros_like(positions), positions
        else:  # only the span of these positions (a micro-batch of a rank's strided share)
            first = int(positions.min())
            source, index = self.mixture.split(first, int(positions.max()) + 1 - first)
            source, index = source[positions - first], index[positions - first]
        blocks, valid = None, np.empty(len(positions), dtype=np.int64)
        for s in np.unique(source).tolist():
            mine = np.flatnonzero(source == s)
            shard = np.searchsorted(self.first_rows[s], index[mine], side="right") - 1
            for j in np.unique(shard).tolist():
                these = mine[shard == j]
                got, got_valid = self.reader.hold((s, j)).rows(index[these] - self.first_rows[s][j])
                if blocks is None:
                    blocks = np.empty((len(positions), got.shape[1]), dtype=np.int64)
                blocks[these], valid[these] = got, got_valid
        return to_tensors(blocks, valid)

    def close(self) -> None:
        self.reader.close()
