"""Deterministic, resumable batches from a sample stream: the part of loading that every
training run shares.

A sample stream (`objective.SampleStream`) maps positions of an infinite, seeded global sequence
to sample ids: pretraining streams the manifests' shards (streaming.py), fine-tuning shuffles a
small in-memory example set (`ShuffledSamples`). The loader's whole state is one integer, the
number of samples consumed, so resuming continues at exactly the next sample, and resuming with a
different number of workers at the same global batch continues the same global sequence (each
data-parallel rank takes its slice of every global batch).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def cache_directory() -> Path:
    """The node's cache root (shards under `shards/`, checkpoint partitions under `checkpoints/`)."""
    return Path(os.environ.get("SORA_CACHE", Path(tempfile.gettempdir()) / "sora-cache"))


class GlobalOrder:
    """The infinite, seeded, epoch-by-epoch shuffled sequence of the ids of a small in-memory
    sample set (it holds a permutation of all of them: fine-tuning sets, not pretraining corpora)."""

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


class ShuffledSamples:
    """A sample stream over an in-memory set (`len()` and `batch(ids)`), shuffled each epoch."""

    def __init__(self, samples, seed: int) -> None:
        self.samples, self.order = samples, GlobalOrder(len(samples), seed)

    def __len__(self) -> int:
        return len(self.samples)

    def ids(self, start: int, count: int) -> np.ndarray:
        return self.order.ids(start, count)

    def seek(self, position: int, ids: np.ndarray) -> None:
        """Everything is in memory already."""

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, ...]:
        return self.samples.batch(ids)

    def progress(self, consumed: int) -> dict:
        return {"epoch": consumed // len(self.samples)}

    def stop_position(self) -> int | None:
        return None

    def close(self) -> None:
        """Nothing to release."""


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

    stream: object  # an objective.SampleStream
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
        ids = self.stream.ids(self.consumed, self.global_batch)
        per_rank = self.global_batch // self.dp_size
        return ids[self.dp_rank * per_rank : (self.dp_rank + 1) * per_rank]

    def next_step(self) -> tuple[list[tuple[torch.Tensor, ...]], np.ndarray]:
        """Micro-batches of the next step and their sample ids; advances the state."""
        ids = self.step_ids()
        self.stream.seek(self.consumed, ids)
        micro = []
        for k in range(self.grad_accum):
            chunk = ids[k * self.micro_batch : (k + 1) * self.micro_batch]
            micro.append(self.stream.batch(chunk))
        self.consumed += self.global_batch
        return micro, ids

    def seek_current(self) -> None:
        """Hold (download if needed) what the next step reads: before training starts, outside any
        collective, so a node with an empty cache downloads while the others wait in a barrier."""
        self.stream.seek(self.consumed, self.step_ids())

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, **self.stream.progress(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])


def validation_batches(
    blocks, batches: int, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int
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
