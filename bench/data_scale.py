"""Evidence by scaling for the data stage: wall time, driver memory, driver-owned objects and the
largest Ray worker's memory on synthetic corpora of 1x, 4x and 16x, measured in the same run.

A corpus of `--base-docs` documents (default 65,536 of ~450 bytes, `bench/synth_corpus.py`: ~2%
exact and ~2% near duplicates) in jsonl files of `--docs-per-file` lines (~3.7 MB) is scaled by
each of `--scales`: documents, files and read blocks (`data.read_blocks` = one per file) all grow,
so 16x is 1,048,576 documents in 128 files. Each scale's stage runs in a fresh driver subprocess
(this file with `--driver`), which starts its local Ray first (outside the timed region) and then
runs `preprocess` into a fresh `file://` store while a thread samples, every `--interval` s:

- the driver's RSS (plus `ru_maxrss` at the end: the driver process's lifetime peak);
- the driver's reference table, `len(core_worker.get_all_reference_counts())` (every object the
  driver owns or borrows), and its in-process memory store (inlined small objects: count, bytes);
- every task's own peak: the RSS it added to its worker (`pipeline/data/task_memory.py`: the peak
  is reset when a task starts, so a worker's earlier tasks and imports do not count);
- every Ray worker process under the driver (cmdline with `ray::` or `default_worker.py`): RSS and
  RSS less shared pages (heap; RSS also counts object-store pages the worker has mapped).

The baseline is a tiny corpus (`--tiny-docs`, best of `--fixed-reps` fresh drivers): its wall time
is the stage's fixed cost, subtracted before comparing wall growth with input growth. One JSON line
per run, then a markdown table and the flatness check (max/min across scales; target within 20%).

    python bench/data_scale.py                                   # 1x/4x/16x + boilerplate cluster
    python bench/data_scale.py --base-docs 3000 --scales 1 2 --boilerplate 2000   # smoke
    python bench/data_scale.py --scales --boilerplate 0 --zst-memory 200          # 1 GB .zst only

`--boilerplate N`: N near-identical documents (one template, 3 words varied each) mixed into a 1x
corpus; how many of them the stage removed. `--zst-memory MB`: one `.jsonl.zst` of 5 x MB
decompressed, run with `data.task_memory` = MB (when the config has that field); the largest
worker's peak RSS against the decompressed size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: Ray supplies the parallelism

MB = 2**20


class Sampler:
    """Samples, in a thread, the driver's RSS, its Ray reference table and memory store, and the RSS
    of every Ray worker process under it; keeps the peaks (per-process peaks of the workers)."""

    def __init__(self, interval: float) -> None:
        import psutil
        import ray

        self.interval, self.process, self.done = interval, psutil.Process(), threading.Event()
        self.core_worker = ray._private.worker.global_worker.core_worker
        self.rss_start = self.rss_peak = self.process.memory_info().rss
        self.refs_peak = self.store_objects_peak = self.store_bytes_peak = 0
        self.workers: dict[int, dict] = {}  # pid -> peak rss, peak rss - shared, its task at the peak
        self.workers_peak = self.samples = 0

    def __enter__(self) -> Sampler:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self.done.wait(self.interval):
                return

    def sample(self) -> None:
        import psutil

        self.samples += 1
        self.rss_peak = max(self.rss_peak, self.process.memory_info().rss)
        self.refs_peak = max(self.refs_peak, len(self.core_worker.get_all_reference_counts()))
        self.store_objects_peak = max(self.store_objects_peak, self.core_worker.get_memory_store_size())
        self.store_bytes_peak = max(self.store_bytes_peak, self.core_worker.get_local_memory_store_bytes_used())
        workers = 0
        for child in self.process.children(recursive=True):
            try:
                title = " ".join(child.cmdline())
                if "ray::" not in title and "default_worker.py" not in title:
                    continue
                memory = child.memory_info()
            except psutil.Error:  # exited between the listing and the read
                continue
            workers += 1
            peak = self.workers.setdefault(child.pid, {"rss": 0, "heap": 0, "task": "", "at_peak": ""})
            if not title.startswith("ray::IDLE"):
                peak["task"] = title.split(" ")[0][:60]  # the task it runs (or ran last)
            if memory.rss > peak["rss"]:
                peak.update(rss=memory.rss, at_peak=peak["task"] or "ray::IDLE")
            peak["heap"] = max(peak["heap"], memory.rss - memory.shared)
        self.workers_peak = max(self.workers_peak, workers)

    def result(self) -> dict:
        largest = max(self.workers.values(), key=lambda w: w["rss"], default={"rss": 0, "heap": 0, "at_peak": ""})
        return {
            "driver_rss_start_mb": round(self.rss_start / MB, 1),
            "driver_peak_rss_mb": round(self.rss_peak / MB, 1),
            "driver_rss_growth_mb": round((self.rss_peak - self.rss_start) / MB, 1),
            "driver_peak_refs": self.refs_peak,
            "driver_peak_store_objects": self.store_objects_peak,
            "driver_peak_store_mb": round(self.store_bytes_peak / MB, 2),
            "worker_peak_rss_mb": round(largest["rss"] / MB, 1),
            "worker_peak_heap_mb": round(max((w["heap"] for w in self.workers.values()), default=0) / MB, 1),
            "worker_peak_task": largest["at_peak"],  # the task the largest worker ran at (or before) its peak
            "workers_seen": len(self.workers),
            "workers_peak_alive": self.workers_peak,
            "samples": self.samples,
        }


def _task_memory(mb: int) -> str | int | None:
    """`data.task_memory` for `mb` MB: "<mb>MiB" for a pydantic `ByteSize` field, else the number of
    MB; None when the field does not exist (yet) in this checkout's config."""
    from pydantic import ByteSize

    from pipeline.config.data import DataConfig

    field = DataConfig.model_fields.get("task_memory")
    if field is None:
        return None
    return f"{mb}MiB" if field.annotation is ByteSize else mb


def _count_planted_removed(root: str, name: str, marker: str) -> dict:
    """Removed documents starting with `marker` (the planted cluster), from the run's rejects file."""
    import pyarrow as pa
    import pyarrow.compute as pc

    counts: dict[str, int] = {}
    for path in (Path(root.removeprefix("file://")) / "datasets" / name / "rejects").rglob("*.arrow"):
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all().select(["reason", "text"])
        reasons = table.filter(pc.starts_with(table["text"], marker))["reason"].value_counts()
        for item in reasons.to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def drive(spec: dict) -> dict:
    """One stage run in this (fresh) process: Ray started first, then the sampled, timed stage."""
    import resource

    import sora.tokenizer  # noqa: F401  (imported by the stage on the driver; kept outside the timing)
    from pipeline.config.run import RunConfig

    try:
        from pipeline.data import task_memory as accounting
    except ImportError:  # a version before per-task accounting (a "before" run from a worktree)
        accounting = None
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter
    from pipeline.ray_runtime import ensure_ray

    data = {
        "name": spec["name"],
        "sources": spec["sources"],
        "max_error_rate": 0.05,
        "dedup": {"exact": True, "near": True},
        "tokenizer": {"sample_bytes": spec["sample_mb"] * MB},
        "shard_bytes": spec["shard_mb"] * MB,
    }
    if spec["partition_mb"]:  # 0: leave the config's default (and run on versions without the field)
        data["shuffle_partition_bytes"] = spec["partition_mb"] * MB
    if spec.get("read_blocks"):
        data["read_blocks"] = spec["read_blocks"]
    task_memory = _task_memory(spec["task_memory_mb"]) if spec.get("task_memory_mb") else None
    if task_memory is not None:
        data["task_memory"] = task_memory
    config = RunConfig.model_validate(
        {"storage": {"root": spec["root"]}, "ray": {"num_cpus": spec["cpus"]}, "data": data}
    )
    # Every task's own peak (`pipeline/data/task_memory.py`): workers inherit this environment.
    task_log = Path(tempfile.mkdtemp(prefix="sora-task-memory-"))
    if accounting is not None:
        os.environ[accounting.LOG] = str(task_log)
    started = time.perf_counter()
    ensure_ray(config.ray)
    ray_start = time.perf_counter() - started
    with Sampler(spec["interval"]) as sampler:
        started = time.perf_counter()
        manifest = preprocess(config, Reporter(quiet=True))
        wall = time.perf_counter() - started
    stats = manifest.stats.run
    result = {
        "wall_s": round(wall, 2),
        "ray_start_s": round(ray_start, 2),
        "input_mb": round(stats.source_bytes / 1e6, 2),
        "docs_read": stats.docs_read,
        "docs_kept": stats.docs_kept,
        "exact_removed": stats.duplicates.get("exact", 0),
        "near_removed": stats.duplicates.get("near", 0),
        "tokens": sum(stats.tokens.values()),
        "shards": sum(len(v) for v in manifest.shards.values()),
        **sampler.result(),
        **_task_peaks(task_log),
        # Linux: KB. The driver's lifetime peak (imports and Ray start included).
        "driver_ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if spec.get("task_memory_mb"):
        result["task_memory_set"] = "field absent: not set" if task_memory is None else config.data.task_memory
    if spec.get("marker"):
        result["planted_removed"] = _count_planted_removed(spec["root"], spec["name"], spec["marker"])
    return result


def _task_peaks(directory: Path) -> dict:
    """The largest memory one task added to its worker (its peak RSS less the RSS it started
    from), which task, and the largest absolute peak, from the tasks' own accounting lines."""
    lines = [json.loads(line) for path in directory.glob("*.jsonl") for line in path.read_text().splitlines()]
    if not lines:
        return {"task_peak_growth_mb": None, "task_peak_growth_task": None, "tasks_accounted": 0}
    largest = max(lines, key=lambda r: r["peak"] - r["start"])
    by_task: dict[str, float] = {}
    for r in lines:
        by_task[r["task"]] = max(by_task.get(r["task"], 0.0), round((r["peak"] - r["start"]) / MB, 1))
    return {
        "task_peak_growth_mb": round((largest["peak"] - largest["start"]) / MB, 1),
        "task_peak_growth_task": largest["task"],
        "task_peak_rss_mb": round(max(r["peak"] for r in lines) / MB, 1),
        "tasks_accounted": len(lines),
        "task_growth_by_step_mb": dict(sorted(by_task.items(), key=lambda kv: -kv[1])),
    }


def run_driver(args, tmp: Path, name: str, sources: list[dict], **extra) -> dict:
    """`drive` in a fresh subprocess, so every run starts from a clean driver (and a fresh Ray)."""
    spec = {
        "root": f"file://{tmp}/store",
        "name": name,
        "sources": sources,
        "cpus": args.cpus,
        "interval": args.interval,
        "sample_mb": args.tokenizer_sample_mb,
        "shard_mb": args.shard_mb,
        "partition_mb": args.partition_mb,
        **extra,
    }
    done = subprocess.run([sys.executable, __file__, "--driver", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"driver run {name!r} failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def corpus_run(args, name: str, docs: int, **corpus) -> dict:
    """Generate a corpus (one read block per file) and run the stage on it in a fresh driver."""
    from synth_corpus import BOILERPLATE_HEADER, write_corpus

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        started = time.perf_counter()
        written = write_corpus(Path(tmp) / "corpus", docs, args.seed, args.docs_per_file, **corpus)
        generate = time.perf_counter() - started
        blocks = written["files"]
        marker = {"marker": BOILERPLATE_HEADER} if corpus.get("extra_count") else {}
        result = run_driver(
            args, Path(tmp), name, [{"kind": "jsonl", "uri": f"{tmp}/corpus"}], read_blocks=blocks, **marker
        )
    return {
        "docs": written["docs"],
        "files": written["files"],
        "read_blocks": blocks,
        "planted": written["planted"],
        "generate_s": round(generate, 2),
        **result,
    }


def flatness(rows: list[dict]) -> dict:
    out = {}
    for key in (
        "driver_peak_rss_mb",
        "driver_rss_growth_mb",
        "driver_peak_refs",
        "worker_peak_rss_mb",
        "worker_peak_heap_mb",
        "task_peak_growth_mb",
    ):
        values = [r[key] for r in rows]
        if any(v is None for v in values):  # not measured by this version
            continue
        ratio = max(values) / min(values) if min(values) > 0 else (1.0 if max(values) == 0 else float("inf"))
        out[key] = {"values": values, "max_over_min": round(ratio, 3), "within_20pct": ratio <= 1.2}
    first, last = rows[0], rows[-1]
    out["wall"] = {
        "input_ratio": round(last["input_mb"] / first["input_mb"], 2),
        "wall_ratio": round(last["wall_s"] / first["wall_s"], 2),
        "wall_ratio_minus_fixed": (
            round(last["wall_minus_fixed_s"] / first["wall_minus_fixed_s"], 2)
            if first["wall_minus_fixed_s"] > 0
            else None
        ),
    }
    return out


def table(rows: list[dict]) -> str:
    head = (
        "| scale | docs | files=blocks | input MB | wall s | wall-fixed s | growth vs input | driver peak RSS MB "
        "| ru_maxrss MB | peak refs | mem-store objs / MB | largest worker RSS (heap) MB | read | kept | exact | near |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['scale']:g}x | {r['docs']:,} | {r['files']} | {r['input_mb']} | {r['wall_s']} | "
            f"{r['wall_minus_fixed_s']} | {r['growth_vs_input']} | {r['driver_peak_rss_mb']} | "
            f"{r['driver_ru_maxrss_mb']} | {r['driver_peak_refs']:,} | {r['driver_peak_store_objects']:,} / "
            f"{r['driver_peak_store_mb']} | {r['worker_peak_rss_mb']} ({r['worker_peak_heap_mb']}) | "
            f"{r['docs_read']:,} | {r['docs_kept']:,} | {r['exact_removed']:,} | {r['near_removed']:,} |"
        )
    return "\n".join(lines)


def scaling(args) -> None:
    fixed = min(corpus_run(args, "tiny", args.tiny_docs)["wall_s"] for _ in range(args.fixed_reps))
    print(json.dumps({"bench": "data-scale-fixed", "tiny_docs": args.tiny_docs, "fixed_wall_s": fixed}), flush=True)
    rows = []
    for scale in args.scales:
        row = {
            "bench": "data-scale",
            "scale": scale,
            **corpus_run(args, f"scale-{scale:g}x", round(args.base_docs * scale)),
        }
        row["wall_minus_fixed_s"] = round(row["wall_s"] - fixed, 2)
        first = rows[0] if rows else row
        wall_growth = row["wall_minus_fixed_s"] / first["wall_minus_fixed_s"] if first["wall_minus_fixed_s"] > 0 else 0
        # None when the first scale's wall does not exceed the fixed cost (too small a base to say).
        growth = wall_growth / (row["input_mb"] / first["input_mb"]) if first["wall_minus_fixed_s"] > 0 else None
        row["growth_vs_input"] = None if growth is None else round(growth, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    flat = flatness(rows)
    print(json.dumps({"bench": "data-scale-flatness", "fixed_wall_s": fixed, **flat}), flush=True)
    print("\n" + table(rows) + "\n")
    for key, value in flat.items():
        if key == "wall":
            print(
                f"- wall {rows[-1]['scale']:g}x / {rows[0]['scale']:g}x: {value['wall_ratio']} raw, "
                f"{value['wall_ratio_minus_fixed']} less the fixed {fixed} s, vs input x{value['input_ratio']}"
            )
        else:
            verdict = "ok" if value["within_20pct"] else "NOT within 20%"
            print(f"- {key}: max/min {value['max_over_min']} ({verdict}) {value['values']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-docs", type=int, default=65_536, help="documents of the 1x corpus")
    parser.add_argument(
        "--scales", type=float, nargs="*", default=[1, 4, 16], help="multiples of the base (none: skip)"
    )
    parser.add_argument("--docs-per-file", type=int, default=8192, help="jsonl lines per file (~3.7 MB)")
    parser.add_argument("--tiny-docs", type=int, default=1000, help="documents of the fixed-cost corpus")
    parser.add_argument("--fixed-reps", type=int, default=2, help="fixed-cost runs (best is kept)")
    parser.add_argument("--boilerplate", type=int, default=100_000, help="planted near-identical cluster (0: skip)")
    parser.add_argument("--zst-memory", type=int, default=0, help="MB: run a .jsonl.zst of 5x that decompressed")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="ray.num_cpus of the local Ray")
    parser.add_argument("--interval", type=float, default=0.2, help="sampling period, seconds")
    parser.add_argument("--tokenizer-sample-mb", type=int, default=2, help="data.tokenizer.sample_bytes, MB")
    parser.add_argument("--shard-mb", type=int, default=16, help="data.shard_bytes, MB (shard count grows too)")
    parser.add_argument(
        "--partition-mb",
        type=int,
        default=32,
        help="data.shuffle_partition_bytes, MB: small enough that the 1x corpus already spans several "
        "partitions, as a terabyte does at the 256 MB default (task memory follows the target, not the corpus)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder for corpora and stores (default: system temp)")
    parser.add_argument("--driver", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        print(json.dumps(drive(json.loads(args.driver))), flush=True)
        return
    if args.scales:
        scaling(args)
    if args.boilerplate:
        from synth_corpus import boilerplate

        result = corpus_run(
            args,
            "boilerplate",
            args.base_docs,
            extra=boilerplate(args.boilerplate, args.seed),
            extra_count=args.boilerplate,
        )
        planted = result.pop("planted_removed")
        removed = sum(planted.values())
        print(
            json.dumps(
                {
                    "bench": "data-scale-boilerplate",
                    "cluster": args.boilerplate,
                    "cluster_removed": planted,
                    "cluster_kept": args.boilerplate - removed,
                    **result,
                }
            ),
            flush=True,
        )
    if args.zst_memory:
        from synth_corpus import write_zst

        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            written = write_zst(Path(tmp) / "corpus" / "big.jsonl.zst", 5 * args.zst_memory * MB, args.seed)
            result = run_driver(
                args, Path(tmp), "zst", [{"kind": "jsonl", "uri": f"{tmp}/corpus"}], task_memory_mb=args.zst_memory
            )
        decompressed = written["decompressed_bytes"] / MB
        print(
            json.dumps(
                {
                    "bench": "data-scale-zst",
                    "task_memory_mb": args.zst_memory,
                    "decompressed_mb": round(decompressed, 1),
                    "compressed_mb": round(written["compressed_bytes"] / MB, 1),
                    "worker_peak_rss_over_decompressed": round(result["worker_peak_rss_mb"] / decompressed, 3),
                    "worker_peak_heap_over_decompressed": round(result["worker_peak_heap_mb"] / decompressed, 3),
                    **result,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
