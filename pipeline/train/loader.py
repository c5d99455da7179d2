"""Deterministic, resumable data loading from a manifest's Arrow shards.

The global sample order is a pure function of (seed, epoch, manifest): epoch e visits every
training block once in the order `permutation(PCG64([seed, e]))`, and epochs follow each other
forever. The loader's whole state is one integer, the number of samples consumed, so resuming
continues at exactly the next sample, and resuming with a different number of workers at the
same global batch continues the same global sequence (each data-parallel rank takes its slice of
every global batch).

Shards are downloaded once per node into a local cache, verified against the manifest's sha256,
and memory-mapped, so random access to any block costs no copy of the shard.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..data.shards import CorruptShardError
from ..records import ShardEntry
from ..storage import ObjectStore
from .node_lock import node_lock


def cache_directory() -> Path:
    return Path(os.environ.get("SORA_CACHE", Path(tempfile.gettempdir()) / "sora-cache"))


def fetch_shard(store: ObjectStore, entry: ShardEntry, cache: Path) -> Path:
    """Local verified copy of a shard, content-addressed by sha256, downloaded once per node.

    The ranks of a node share `cache`; a lock per shard makes one of them download (streaming,
    verified) while the others wait and then reuse the file.
    """
    path = cache / f"{entry.sha256}.arrow"
    if path.exists():
        return path
    with node_lock(cache / f"{entry.sha256}.lock"):
        if not path.exists():
            try:
                store.download_file(entry.key, path, entry.sha256, entry.bytes)
            except ValueError as error:
                raise CorruptShardError(f"shard {entry.uri} is corrupt: {error}") from None
    return path


class BlockStore:
    """Random access to the blocks of one split, across its shards."""

    def __init__(self, store: ObjectStore, entries, cache: Path | None = None) -> None:
        cache = cache or cache_directory()
        entries = [e if isinstance(e, ShardEntry) else ShardEntry.from_dict(e) for e in entries]
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []
        starts = []
        total = 0
        for entry in entries:
            reader = pa.ipc.open_file(pa.memory_map(str(fetch_shard(store, entry, cache))))
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                ids = batch.column("input_ids")
                width = ids.type.list_size
                values = ids.values.to_numpy(zero_copy_only=True).reshape(-1, width)
                self.batches.append((values, batch.column("valid").to_numpy()))
                starts.append(total)
                total += batch.num_rows
        self.starts = np.asarray(starts, dtype=np.int64)
        self.num_samples = total

    def __len__(self) -> int:
        return self.num_samples

    def get(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blocks int64 [n, seq_len+1], valid int [n]) for global sample ids."""
        which = np.searchsorted(self.starts, sample_ids, side="right") - 1
        rows = [self.batches[b][0][i - self.starts[b]] for b, i in zip(which, sample_ids, strict=True)]
        valid = [self.batches[b][1][i - self.starts[b]] for b, i in zip(which, sample_ids, strict=True)]
        return np.stack(rows).astype(np.int64), np.asarray(valid)

    def batch(self, sample_ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The model inputs of these samples: (inputs, labels) of causal language modelling."""
        return to_tensors(*self.get(sample_ids))


class GlobalOrder:
    """The infinite, seeded, epoch-by-epoch shuffled sequence of sample ids."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples == 0:
            raise ValueError("the dataset has no training samples")
        self.num_samples, self.seed = num_samples, seed
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.num_samples)
            self._epoch = epoch
        return self._perm

    def ids(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for k in range(count):
            epoch, offset = divmod(start + k, self.num_samples)
            out[k] = self.permutation(epoch)[offset]
        return out


def to_tensors(blocks: np.ndarray, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs `[:-1]`, labels `[1:]`; labels past the block's real tokens are ignored (-100)."""
    tokens = torch.from_numpy(blocks)
    inputs, labels = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    positions = torch.arange(labels.shape[1])[None, :]
    labels[positions >= torch.as_tensor(valid)[:, None] - 1] = -100
    return inputs, labels


@dataclass
class TrainLoader:
    """The slice of each global batch that belongs to one data-parallel rank, micro-batch by micro-batch."""

    blocks: BlockStore  # or any sample source with `len()` and `batch(ids)` (fine-tuning examples)
    order: GlobalOrder
    global_batch: int
    micro_batch: int
    dp_rank: int
    dp_size: int
    consumed: int = 0  # samples of the global sequence consumed so far: the whole loader state

    @property
    def grad_accum(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp_size)

    def step_ids(self) -> np.ndarray:
        """This rank's sample ids for the next step (grad_accum x micro_batch of them)."""
        ids = self.order.ids(self.consumed, self.global_batch)
        per_rank = self.global_batch // self.dp_size
        return ids[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]

    def next_step(self) -> tuple[list[tuple[torch.Tensor, ...]], np.ndarray]:
        """Micro-batches of the next step and their sample ids; advances the state."""
        ids = self.step_ids()
        micro = []
        for k in range(self.grad_accum):
            chunk = ids[k * self.micro_batch : (k + 1) * self.micro_batch]
            micro.append(self.blocks.batch(chunk))
        self.consumed += self.global_batch
        return micro, ids

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "epoch": self.consumed // len(self.blocks)}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])


def validation_batches(
    blocks: BlockStore, batches: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
) -> list[tuple[torch.Tensor, ...]]:
    """A fixed validation set (the first samples in shard order), split across ranks in micro-batches.

    Every rank gets the same number of full micro-batches: a rank with one micro-batch more would
    wait forever in the collective of the next step. The set is cut to a multiple of the global
    batch, which every data-parallel split of a run divides, so an elastic run validates on the
    same samples whatever its worker count (only a set smaller than one global batch is cut to
    a multiple of dp_size x micro_batch, and then depends on it).
    """
    unit = dp_size * micro_batch
    available = min(len(blocks), batches * global_batch)
    whole = math.lcm(global_batch, unit)  # = global_batch for any valid split
    count = available // whole * whole or available // unit * unit
    ids = np.arange(count)[dp_rank::dp_size]
    return [blocks.batch(ids[i : i + micro_batch]) for i in range(0, len(ids), micro_batch)]
