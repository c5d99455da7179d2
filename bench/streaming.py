"""Streaming training data from throttled object storage: data wait, time to first step, loader memory.

    python bench/streaming.py [--shards 40] [--rows 4000] [--bandwidth-mb 20] [--latency-ms 50]

Synthetic datasets are published to a local store: a 1x corpus (`--shards` shards) and larger ones
(`--scales`, default 10: 10x the shards). Every shard download goes through a store that sleeps the request
latency and streams at a fixed bandwidth (`ThrottledStore`), like a remote bucket.

1. **Data wait**: 1 rank streams the largest corpus with a node cache of 1/10 of its split, while each
   step spends `--step-ms` of compute (a fixed busy loop on the main thread). The loader's share of
   the step time (`TrainLoader.next_step`, what the trainer logs as `data_wait_s`) is printed with
   the cache's polled peak, the bytes downloaded and the evictions, against the baseline of the
   same loop on a node holding the whole split (what the loader costs without any streaming).
2. **Time to first step** on an empty cache, every corpus size (`--reps` each, mean and stdev),
   against the baseline of the pre-streaming loader: download the whole split, then step.
3. **Loader memory per rank** (tracemalloc peak of building the stream and reading `--steps` steps),
   per corpus size, against the baseline: the int64 permutation of all samples the old loader held.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))


class ThrottledStore:
    """An object store whose downloads pay a per-request latency and a fixed bandwidth."""

    def __init__(self, inner, bandwidth: float, latency: float) -> None:
        self.inner, self.bandwidth, self.latency = inner, bandwidth, latency
        self.downloaded = 0

    def download_file(self, key, path, expected_sha256=None, expected_size=None):
        started = time.perf_counter()
        result = self.inner.download_file(key, path, expected_sha256, expected_size)
        owed = self.latency + result[0] / self.bandwidth - (time.perf_counter() - started)
        time.sleep(max(0.0, owed))
        self.downloaded += result[0]
        return result

    def __getattr__(self, name):
        return getattr(self.inner, name)


def busy(seconds: float) -> None:
    """A step's compute: a busy loop (holds the GIL like the Python side of a real step)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def stream_for(store, manifest, cache_dir: Path, limit: int, window: int, prefetch: int, seed: int = 0):
    from pipeline.train.shard_cache import ShardCache
    from pipeline.train.streaming import DataStream, StreamSettings

    return DataStream(store, [(manifest, 1.0)], StreamSettings(seed, window, prefetch), ShardCache(cache_dir, limit))


def data_wait(store, manifest, args, cache_dir: Path, limit: int) -> dict:
    """Steps of `--step-ms` compute; the loader's time per step (and the cache's peak, polled)."""
    from pipeline.train.loader import TrainLoader

    stream = stream_for(store, manifest, cache_dir, limit, args.window, args.prefetch)
    loader = TrainLoader(stream, args.batch, args.batch, 0, 1)
    waits, steps, peak = [], [], [0]
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], stream.cache.usage())

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    downloaded = getattr(store, "downloaded", 0)
    for _ in range(args.wait_steps):
        started = time.perf_counter()
        loader.next_step()
        fetched = time.perf_counter()
        busy(args.step_ms / 1000)
        waits.append(fetched - started)
        steps.append(time.perf_counter() - started)
    done.set()
    poller.join()
    stream.close()
    later = waits[1:]  # step 1 waits for its first shards (time to first step, below)
    return {
        "cache_limit_bytes": limit,
        "cache_peak_bytes": peak[0],
        "downloaded_bytes": getattr(store, "downloaded", 0) - downloaded,
        "evictions": stream.cache.evictions,
        "data_wait_share": sum(later) / sum(steps[1:]),
        "data_wait_ms_median": statistics.median(later) * 1000,
        "data_wait_ms_max": max(later) * 1000,
        "steps": args.wait_steps,
    }


def data_wait_both(store, local, manifest, args, work: Path) -> dict:
    """Streaming (throttled store, cache 1/10 of the split) vs the baseline of a node that holds
    the whole split locally (the pre-streaming loader: every shard downloaded before step 1)."""
    from pipeline.train.shard_cache import ShardCache

    split = sum(e.bytes for e in manifest.split("train"))
    streamed = data_wait(store, manifest, args, work / "wait-streamed", split // 10)
    whole = ShardCache(work / "wait-local", 1 << 40)
    for entry in manifest.split("train"):
        whole.hold(local, entry).release()
    baseline = data_wait(local, manifest, args, work / "wait-local", 1 << 40)
    return {"split_bytes": split, "streamed": streamed, "local_baseline": baseline}


def first_step(store, manifest, args, work: Path, tag: str) -> dict:
    """Seconds from an empty cache to the end of the first step: streaming vs download-everything."""
    from pipeline.train.loader import TrainLoader
    from pipeline.train.shard_cache import ShardCache

    streamed, whole = [], []
    for rep in range(args.reps):
        started = time.perf_counter()
        stream = stream_for(store, manifest, work / f"first-{tag}-{rep}", 1 << 40, args.window, args.prefetch)
        TrainLoader(stream, args.batch, args.batch, 0, 1).next_step()
        streamed.append(time.perf_counter() - started)
        stream.close()
        started = time.perf_counter()  # the pre-streaming loader: every shard of the split, then the step
        cache = ShardCache(work / f"whole-{tag}-{rep}", 1 << 40)
        for entry in manifest.split("train"):
            cache.hold(store, entry).release()
        stream = stream_for(store, manifest, work / f"whole-{tag}-{rep}", 1 << 40, args.window, args.prefetch)
        TrainLoader(stream, args.batch, args.batch, 0, 1).next_step()
        whole.append(time.perf_counter() - started)
        stream.close()
    return {"streamed_s": streamed, "download_all_s": whole}


def loader_memory(store, manifest, args, work: Path, tag: str) -> dict:
    from pipeline.train.loader import TrainLoader

    samples = sum(e.rows for e in manifest.split("train"))
    tracemalloc.start()
    stream = stream_for(store, manifest, work / f"mem-{tag}", 1 << 40, args.window, args.prefetch)
    loader = TrainLoader(stream, args.batch, args.batch, 0, 1)
    for _ in range(args.steps):
        loader.next_step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stream.close()
    return {"samples": samples, "peak_bytes": peak, "old_permutation_bytes": 8 * samples}


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} s +- {statistics.stdev(values) if len(values) > 1 else 0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=40, help="shards of the 1x corpus")
    parser.add_argument("--scales", type=int, nargs="+", default=[10], help="corpus sizes besides 1x (e.g. 4 16)")
    parser.add_argument("--rows", type=int, default=1000, help="rows (samples) per shard")
    parser.add_argument("--bandwidth-mb", type=float, default=20.0, help="download bandwidth, MB/s")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="latency per request")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256, help="global batch (samples per step)")
    parser.add_argument("--step-ms", type=float, default=100.0, help="compute per step")
    parser.add_argument("--wait-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20, help="steps read for the memory figure")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from streamgen import publish_synthetic

    from pipeline.storage import open_store

    work = Path(tempfile.mkdtemp(prefix="sora-bench-streaming-"))
    local = open_store(f"file://{work}/store")
    started = time.perf_counter()
    scales = sorted({1, *args.scales})
    corpora = {f"{k}x": publish_synthetic(local, f"corpus-{k}x", k * args.shards, args.rows) for k in scales}
    print(f"published {', '.join(corpora)} corpora ({args.shards} shards per 1x) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
    store = ThrottledStore(local, args.bandwidth_mb * 1e6, args.latency_ms / 1000)
    top = f"{scales[-1]}x"

    waits = data_wait_both(store, local, corpora[top], args, work)
    for name, wait in (("streamed", waits["streamed"]), ("local copy (baseline)", waits["local_baseline"])):
        print(f"data wait ({top}), {name}: {100 * wait['data_wait_share']:.3f} % of step time (median "
              f"{wait['data_wait_ms_median']:.2f} ms, max {wait['data_wait_ms_max']:.1f} ms) over {wait['steps']} "
              f"steps of {args.step_ms:.0f} ms; cache peak {wait['cache_peak_bytes'] / 2**20:.2f} MiB of limit "
              f"{min(wait['cache_limit_bytes'], waits['split_bytes']) / 2**20:.2f} MiB, "
              f"{wait['downloaded_bytes'] / 2**20:.1f} MiB downloaded, {wait['evictions']} evictions",
              flush=True)  # fmt: skip
    wait = waits["streamed"]
    first = {tag: first_step(store, manifest, args, work, tag) for tag, manifest in corpora.items()}
    for tag, got in first.items():
        print(f"time to first step {tag}: streamed {mean_sd(got['streamed_s'])}, "
              f"download-all baseline {mean_sd(got['download_all_s'])}", flush=True)  # fmt: skip
    ratio_first = statistics.mean(first[top]["streamed_s"]) / statistics.mean(first["1x"]["streamed_s"])
    ratio_whole = statistics.mean(first[top]["download_all_s"]) / statistics.mean(first["1x"]["download_all_s"])
    memory = {tag: loader_memory(store, manifest, args, work, tag) for tag, manifest in corpora.items()}
    ratio_memory = memory[top]["peak_bytes"] / memory["1x"]["peak_bytes"]
    for tag, got in memory.items():
        print(f"loader memory {tag} ({got['samples']} samples): peak {got['peak_bytes'] / 2**20:.2f} MiB "
              f"(old permutation alone: {got['old_permutation_bytes'] / 2**20:.2f} MiB)", flush=True)  # fmt: skip
    share = 100 * wait["data_wait_share"]
    ratio_wait = wait["data_wait_share"] / waits["local_baseline"]["data_wait_share"]
    result = {
        "bench": "streaming",
        "settings": vars(args),
        "data_wait": waits,
        "ratio_data_wait_streamed_vs_local": ratio_wait,
        "first_step": first,
        f"ratio_first_step_{top}_vs_1x": ratio_first,
        f"ratio_first_step_download_all_{top}_vs_1x": ratio_whole,
        "memory": memory,
        f"ratio_memory_{top}_vs_1x": ratio_memory,
    }
    print(f"RATIOS first step {top}/1x streamed {ratio_first:.3f} (download-all {ratio_whole:.2f}); loader memory "
          f"{top}/1x {ratio_memory:.3f}; data wait {share:.3f} % of step time, "
          f"streamed/local {ratio_wait:.2f}")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
