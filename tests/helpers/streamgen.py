"""Synthetic datasets for the streaming tests: many small shards of random token blocks, published
in-process (no Ray, no data stage) with one shared tokenizer, so several of them form a mixture."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

SEQ_LEN = 16
VOCAB = 300  # the tokenizer trained below has ~this many tokens: ids stay below it


@functools.cache
def _tokenizer():
    from pipeline.config.data import DataConfig
    from pipeline.data.tokenizer_step import train_tokenizer

    texts = [(bytes([i]), f"synthetic text number {i} " * 4) for i in range(64)]
    config = DataConfig.model_validate({"name": "synthetic", "tokenizer": {"vocab_size": VOCAB}})
    return train_tokenizer(config, texts)


def shared_tokenizer(store, prefix: str):
    """A tiny BPE tokenizer stored under `prefix` (the same bytes, so the same sha256, everywhere)."""
    from pipeline.data.tokenizer_step import store_tokenizer

    return store_tokenizer(store, prefix, *_tokenizer())


def publish_synthetic(store, name: str, train_shards: int, rows_per_shard: int, val_rows: int = 64, version: int = 1):
    """Publish version `version` of dataset `name`: `train_shards` train shards of `rows_per_shard`
    random blocks each and one val shard. Returns the manifest."""
    from pipeline.data.shards import blocks_table, write_shard
    from pipeline.keys import DatasetKeys
    from pipeline.records import BuildStats, Manifest, ManifestStats, ShardEntry, publish
    from pipeline.storage.lease import acquire_lease

    keys = DatasetKeys(name)
    block = shared_tokenizer(store, keys.prefix)
    rng = np.random.default_rng(hash(name) % 2**32)
    shards = {"train": [], "val": []}
    counts = {"train": [rows_per_shard] * train_shards, "val": [val_rows]}
    for split, sizes in counts.items():
        for index, rows in enumerate(sizes):
            blocks = rng.integers(0, min(block.vocab_size, 250), size=(rows, SEQ_LEN + 1)).astype(np.uint16)
            valid = np.full(rows, SEQ_LEN + 1, dtype=np.int32)
            key = f"{keys.prefix}/shards/v{version}/{split}/part-{index:05d}.arrow"
            entry = write_shard(store, key, blocks_table(blocks, valid), tokens=rows * (SEQ_LEN + 1))
            shards[split].append(ShardEntry(**entry, docs=rows))
    manifest = Manifest(
        schema_version=1,
        version=version,
        parent_version=None if version == 1 else version - 1,
        dataset=name,
        seq_len=SEQ_LEN,
        dtype="uint16",
        tokenizer=block,
        shards=shards,
        stats=ManifestStats(run=BuildStats(), total=BuildStats()),
    )
    lease = acquire_lease(store, keys.lease, 60)
    latest = store.read_with_etag(keys.latest)
    publish(store, manifest, latest[1] if latest else None, lease)
    lease.release()
    return manifest


def token_sum(store, directory: Path, limit: int, seed: int, steps: int, rank: int, ranks: int, step_done=None) -> int:
    """Stream `steps` global batches of 16 as data-parallel rank `rank`; the sum of the tokens read.
    `step_done()` after each step stands for the collective that keeps a run's ranks in lockstep."""
    from pipeline.records import read_version
    from pipeline.train.loader import TrainLoader
    from pipeline.train.shard_cache import ShardCache
    from pipeline.train.streaming import DataStream, StreamSettings

    web = read_version(store, "web")
    stream = DataStream(store, [(web, 1.0)], StreamSettings(seed, 2, 1), ShardCache(directory, limit))
    loader = TrainLoader(stream, 16, 4, rank, ranks)
    total = 0
    for _ in range(steps):
        micro, _ = loader.next_step()
        total += sum(int(inputs.sum()) for inputs, _ in micro)
        if step_done is not None:
            step_done()
    stream.close()
    return total


def stream_rank(root: str, directory: str, limit: int, seed: int, steps: int, rank: int, out, barrier) -> None:
    """A spawned process (a rank of a node): its token sum goes into `out` (multiprocessing queue);
    the ranks of a run meet at `barrier` after every step, as a training step's all-reduce makes them."""
    from pipeline.storage import open_store

    total = token_sum(open_store(root), Path(directory), limit, seed, steps, rank, 2, step_done=barrier.wait)
    out.put((seed, total))
