"""The streaming sample order and the node shard cache, without a training job: purity of the
order (resume anywhere), windows, exact mixture proportions, and the cache's limit, eviction
order, in-use pins, corrupt shards and racing processes."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest
import torch
from streamgen import publish_synthetic, stream_rank, token_sum

from pipeline.data.shards import CorruptShardError
from pipeline.storage import open_store
from pipeline.train import shard_cache
from pipeline.train.loader import TrainLoader
from pipeline.train.mixture_order import CHUNK, MixtureOrder, allocation, integer_weights
from pipeline.train.sample_sequence import SampleSequence
from pipeline.train.shard_cache import CacheFullError, ShardCache
from pipeline.train.streaming import DataStream, StreamSettings


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two datasets with one tokenizer: web (40 shards x 50 rows), code (12 shards x 50 rows)."""
    root = tmp_path_factory.mktemp("synthetic")
    store = open_store(f"file://{root}")
    return store, publish_synthetic(store, "web", 40, 50), publish_synthetic(store, "code", 12, 50)


def test_one_epoch_is_a_permutation_read_window_by_window(synthetic):
    _, web, _ = synthetic
    sequence = SampleSequence([(web, 1.0)], seed=3, window=4)
    total = len(sequence)
    ids = sequence.ids(0, total)
    assert sorted(ids.tolist()) == list(range(total))  # every sample once per epoch
    _, shards, _ = sequence.locate(ids)
    rows_per_window = 4 * 50
    for start in range(0, total, rows_per_window):  # each window reads exactly its 4 shards
        assert len(set(shards[start : start + rows_per_window].tolist())) == 4
    assert not np.array_equal(ids[:200], np.sort(ids[:200]))  # shuffled inside the window
    second = sequence.ids(total, total)
    assert sorted(second.tolist()) == list(range(total)) and not np.array_equal(ids, second)


def test_the_order_is_a_pure_function_of_the_position(synthetic):
    """Resume anywhere (mid-window, mid-chunk, across an epoch) on a fresh object: the same ids."""
    _, web, code = synthetic
    sources = [(web, 0.7), (code, 0.3)]
    straight = SampleSequence(sources, seed=5, window=3).ids(0, 6000)
    for start in (1, 199, CHUNK - 7, 2 * CHUNK + 333, 2999, 5000):
        fresh = SampleSequence(sources, seed=5, window=3)
        assert np.array_equal(fresh.ids(start, 6000 - start), straight[start:])
    assert not np.array_equal(SampleSequence(sources, seed=6, window=3).ids(0, 6000), straight)


def test_memory_per_rank_does_not_grow_with_the_samples(synthetic):
    """What a rank holds: the shard order of one epoch and the permutation of the windows in use."""
    _, web, _ = synthetic
    sequence = SampleSequence([(web, 1.0)], seed=1, window=2)
    sequence.ids(0, 3 * len(sequence))
    order = sequence.orders[0]
    assert len(order._windows) <= 3 and all(len(p) <= 2 * 50 for p in order._windows.values())
    assert len(order._epochs) <= 2


def test_apportionment_is_exact_and_never_takes_back():
    weights = integer_weights([0.5, 0.3, 0.15, 0.05])
    previous = [0] * 4
    for total in range(3000):
        seats = allocation(weights, total)
        assert sum(seats) == total and all(a >= b for a, b in zip(seats, previous, strict=True))
        assert all(abs(s - w * total / sum(weights)) <= 1 for s, w in zip(seats, weights, strict=True))
        previous = seats


def test_mixture_proportions_hold_over_a_few_hundred_steps(synthetic):
    _, web, code = synthetic
    sequence = SampleSequence([(web, 0.7), (code, 0.3)], seed=9, window=4)
    batch, steps = 32, 300
    source, _, _ = sequence.locate(sequence.ids(0, batch * steps))
    share = np.bincount(source, minlength=2) / (batch * steps)
    assert abs(share[0] - 0.7) < 0.002, share
    per_step = source.reshape(steps, batch).mean(axis=1)  # interleaved: every step mixes both
    assert 0 < per_step.min() and per_step.max() < 1
    counts = sequence.progress(batch * steps)["datasets"]
    assert counts["web"]["samples"] + counts["code"]["samples"] == batch * steps
    assert counts["code"]["epoch"] == (batch * steps * 0.3) // len(sequence.orders[1])  # code repeats
    mixture = MixtureOrder([0.7, 0.3], seed=9)
    assert mixture.first_position_of(1, 1000) == int(np.flatnonzero(mixture.split(0, 4000)[0] == 1)[1000])


def test_resume_on_another_world_size_reads_the_same_global_batches(synthetic, tmp_path):
    store, web, code = synthetic
    sources = [(web, 0.7), (code, 0.3)]

    def stream():
        settings = StreamSettings(seed=2, window=2, prefetch=1)
        return DataStream(store, sources, settings, ShardCache(tmp_path / "cache", 1 << 30))

    def global_batches(loaders, steps):
        out = []
        for _ in range(steps):
            parts = [loader.next_step() for loader in loaders]
            ids = np.concatenate([ids for _, ids in parts])
            tokens = torch.cat([inputs for micro, _ in parts for inputs, _ in micro])
            out.append((ids, tokens))
        return out

    one = stream()
    straight = global_batches([TrainLoader(one, 24, 4, 0, 1)], 30)
    two = [stream(), stream()]
    loaders = [TrainLoader(two[r], 24, 4, r, 2) for r in range(2)]
    for loader in loaders:
        loader.load_state_dict({"consumed": 11 * 24})  # a checkpoint of step 11, resumed on 2 ranks
    resumed = global_batches(loaders, 19)
    for (ids, tokens), (ids_again, tokens_again) in zip(straight[11:], resumed, strict=True):
        assert np.array_equal(ids, ids_again) and torch.equal(tokens, tokens_again)
    for s in [one, *two]:
        s.close()


# -- the node cache ---------------------------------------------------------------------------------
def test_cache_keeps_the_limit_evicting_others_first_then_least_recent(synthetic, tmp_path):
    store, web, code = synthetic
    size = max(e.bytes for e in web.split("train") + code.split("train"))
    cache = ShardCache(tmp_path, 4 * size, own={e.sha256 for e in web.split("train")})
    other = cache.hold(store, code.split("train")[0])  # another dataset's shard, used first
    other.release()
    mine = [cache.hold(store, entry) for entry in web.split("train")[:3]]
    for held in mine:
        held.release()
        time.sleep(0.01)  # distinct mtimes: the least recently used is shard 0
    cache.hold(store, web.split("train")[3]).release()
    names = {p.name for p in tmp_path.glob("*.arrow")}
    assert f"{code.split('train')[0].sha256}.arrow" not in names  # the other dataset went first
    cache.hold(store, web.split("train")[4]).release()
    names = {p.name for p in tmp_path.glob("*.arrow")}
    assert f"{web.split('train')[0].sha256}.arrow" not in names  # then this run's oldest
    assert cache.usage() <= cache.limit and len(names) == 4


def test_a_shard_in_use_is_never_evicted(synthetic, tmp_path, monkeypatch):
    store, web, _ = synthetic
    size = max(e.bytes for e in web.split("train"))
    cache = ShardCache(tmp_path, 2 * size)
    pinned = [cache.hold(store, entry) for entry in web.split("train")[:2]]
    monkeypatch.setattr(shard_cache, "ROOM_TIMEOUT_S", 0.5)
    with pytest.raises(CacheFullError, match="raise train.cache_limit"):
        cache.hold(store, web.split("train")[2])
    assert all(held.path.exists() for held in pinned)
    assert not list(tmp_path.glob("*.reserved")) and not list(tmp_path.glob("*.tmp"))
    pinned[0].release()
    cache.hold(store, web.split("train")[2]).release()  # room now: the released one goes
    assert not pinned[0].path.exists() and pinned[1].path.exists()


def test_a_corrupt_shard_is_refused_and_leaves_nothing_behind(synthetic, tmp_path):
    store, web, _ = synthetic
    entry = web.split("train")[5]
    damaged = entry.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(CorruptShardError, match="is corrupt"):
        ShardCache(tmp_path, 1 << 20).hold(store, damaged)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_dead_downloaders_reservation_is_reclaimed(synthetic, tmp_path):
    store, web, _ = synthetic
    size = max(e.bytes for e in web.split("train"))
    (tmp_path / f"{'f' * 64}.reserved").write_text(str(2 * size))  # no process holds its shard lock
    (tmp_path / f".{'f' * 64}.arrow.x1.tmp").write_bytes(b"partial")
    cache = ShardCache(tmp_path, 2 * size)
    cache.hold(store, web.split("train")[0]).release()
    assert not list(tmp_path.glob("*.reserved")) and not list(tmp_path.glob("*.tmp"))


def test_processes_sharing_a_node_cache_stay_under_its_limit(synthetic, tmp_path):
    """Four processes (two runs x two ranks, each run's ranks in lockstep as training keeps them)
    stream 2 epochs of a split 4x the limit through one directory; the limit is the least two runs
    may have, so this also shows that they never wait for each other's room until the timeout."""
    store, web, _ = synthetic
    size = max(e.bytes for e in web.split("train"))
    limit = 2 * (2 * 2 + 1) * size  # two runs at different positions, each (2 x window + prefetch)
    assert sum(e.bytes for e in web.split("train")) >= 4 * limit
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    steps = 2 * len(SampleSequence([(web, 1.0)], 0, 2)) // 16  # two epochs
    barriers = {seed: context.Barrier(2) for seed in (0, 7)}  # two runs (seeds) of two ranks each
    procs = [
        context.Process(
            target=stream_rank, args=(store.root_uri, str(tmp_path), limit, seed, steps, rank, out, barriers[seed])
        )
        for seed in (0, 7)
        for rank in (0, 1)
    ]
    peak = 0
    for proc in procs:
        proc.start()
    while any(proc.is_alive() for proc in procs):
        peak = max(peak, ShardCache(tmp_path, limit).usage())
        time.sleep(0.005)
    assert all(proc.exitcode == 0 for proc in procs)
    assert 0 < peak <= limit, (peak, limit)
    totals = {}
    for _ in procs:
        seed, total = out.get()
        totals[seed] = totals.get(seed, 0) + total
    for seed in (0, 7):  # the two ranks together read exactly what one process reads alone
        assert totals[seed] == token_sum(store, tmp_path / "alone", 1 << 30, seed, steps, 0, 1)


# -- pinning ----------------------------------------------------------------------------------------
def _config(store, run: str, data=None, **train):
    from pipeline.config.run import RunConfig

    return RunConfig.model_validate({"storage": {"root": store.root_uri}, "train": {"run": run, "data": data, **train}})


def test_a_mixture_is_pinned_with_its_order_and_a_change_is_refused(synthetic):
    from pipeline.errors import UserError
    from pipeline.pretrain.mixture import pin_sources
    from pipeline.records import RunPin

    store, web, code = synthetic
    mixture = [{"dataset": "web", "weight": 0.7}, {"dataset": "code", "weight": 0.3}]
    sources = pin_sources(store, _config(store, "pinned", mixture))
    assert [(m.dataset, w) for m, w in sources] == [("web", 0.7), ("code", 0.3)]
    pin, _ = RunPin.load(store, "pinned")
    assert [(p.dataset, p.dataset_version) for p in pin.data] == [("web", 1), ("code", 1)]
    assert (pin.sample_order.seed, pin.sample_order.shuffle_window) == (1234, 8)
    assert pin_sources(store, _config(store, "pinned", mixture))[1][0].dataset == "code"  # a relaunch
    for changed, message in [
        (mixture[::-1], "launched on the mixture"),
        ([{"dataset": "web", "weight": 0.7}, {"dataset": "code", "weight": 0.3, "version": 2}], "launched on"),
        (None, "trains on the mixture"),
    ]:
        with pytest.raises(UserError, match=message):
            pin_sources(store, _config(store, "pinned", changed))
    with pytest.raises(UserError, match="seed 1234 and shuffle_window 8, the config now has seed 7"):
        pin_sources(store, _config(store, "pinned", mixture, seed=7))


def test_datasets_tokenized_differently_cannot_be_mixed(synthetic):
    from pipeline.errors import UserError
    from pipeline.pretrain.mixture import check_compatible

    _, web, code = synthetic
    other = code.model_copy(update={"tokenizer": code.tokenizer.model_copy(update={"sha256": "a" * 64})})
    with pytest.raises(UserError, match="every dataset of a mixture needs the same tokenizer"):
        check_compatible([(web, 0.5), (other, 0.5)])
    with pytest.raises(UserError, match="has seq_len 32"):
        check_compatible([(web, 0.5), (code.model_copy(update={"seq_len": 32}), 0.5)])


def test_a_run_pinned_before_streaming_adopts_the_order_when_it_has_no_checkpoint(synthetic):
    from pipeline.pretrain.mixture import pin_sources
    from pipeline.records import RunPin

    store, web, _ = synthetic
    RunPin(dataset="web", dataset_version=1).create(store, "older")
    assert pin_sources(store, _config(store, "older", dataset="web"))[0][0].version == 1
    assert RunPin.load(store, "older")[0].sample_order.shuffle_window == 8
