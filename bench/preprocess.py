"""Benchmark of the data stage against raw tokenizer throughput and against a peer, measured in
the same run.

For each corpus: run the whole Ray Data stage (read, clean, dedup, train tokenizer, tokenize, pack,
write shards, publish) into a fresh local store and measure end-to-end tokens/s and the driver's
peak RSS during the run; then, in this process on one core, time HF `tokenizers` `encode_batch` on
the same documents with the same tokenizer, and time the peer: what a user would write instead,
HF `datasets` `map(batched=True, num_proc=cores)` with the same tokenizer plus numpy packing (no
dedup, no shards on storage). Prints one JSON line per measurement with

    ratio = stage tokens/s / (cores x single-core tokenizer tokens/s)
    stage_vs_peer = peer wall / stage wall

`--scales` measures wall time at several input sizes (prefixes of site-packages .py files as
jsonl, 8 MB files) plus a tiny corpus whose wall time is the fixed start-up cost, and reports
how much faster than the input the wall time (fixed cost excluded) grows.

    python bench/preprocess.py                          # stdlib + scaling 1x/4x/12x of 8 MB
    python bench/preprocess.py --corpora stdlib,site-packages --scales ""
    python bench/preprocess.py --corpora "" --scales "" --memory-docs 1790,17900,71600

`--filters` measures the cost of the filter chain (issue 21's target: >= 0.7 of the filter-free
throughput): the whole stage with every filter of the chain on (length, language, gopher_repetition,
gopher_quality, c4, fineweb, pii, decontaminate against the held-out split; the sources declared
`content: web` so that each applies) against the stage with the length filter alone, on the same
corpus, alternating the two `--repeats` times; prints the ratio of source MB/s (mean ± stderr) and
of the read + clean phase alone. The filters run as `dry_run` (decontamination flags): every filter
sees every document and the same documents go on, so the later phases do the same work and the
ratio is the filters' own cost. (Dropping for real, the web rules would remove nearly all of a code
corpus, and a run that keeps nothing is cheaper for the wrong reason; the counters of what they
would drop are printed.)

    python bench/preprocess.py --corpora "" --scales "" --filters stdlib,site-packages --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: Ray supplies the parallelism


def site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


def write_prefix_corpus(directory: Path, limit_bytes: int) -> int:
    """The first `limit_bytes` of site-packages .py files (sorted), as one jsonl file per 8 MB."""
    directory.mkdir(parents=True, exist_ok=True)
    total, part, handle = 0, 0, None
    for path in sorted(site_packages().rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if handle is None or handle.tell() > 8 << 20:
            handle = open(directory / f"part-{part:04d}.jsonl", "w")
            part += 1
        handle.write(json.dumps({"text": text}) + "\n")
        total += len(text.encode())
        if total >= limit_bytes:
            break
    return total


def write_chunk_corpus(directory: Path, docs: int, files: int = 8, chunk_bytes: int = 2048) -> int:
    """`docs` documents of about `chunk_bytes` each (consecutive pieces of site-packages .py files,
    cut at line ends) in `files` jsonl files: the same file count whatever the document count, so
    the driver's per-file bookkeeping stays fixed and only the number of documents grows."""
    directory.mkdir(parents=True, exist_ok=True)
    handles = [open(directory / f"part-{i:04d}.jsonl", "w") for i in range(files)]
    written = 0
    for path in sorted(site_packages().rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        start = 0
        while start < len(text) and written < docs:
            end = text.find("\n", start + chunk_bytes)
            end = len(text) if end < 0 else end + 1
            handles[written % files].write(json.dumps({"text": text[start:end]}) + "\n")
            written, start = written + 1, end
        if written >= docs:
            break
    for handle in handles:
        handle.close()
    return written


class PeakRSS:
    """Peak resident memory of this (driver) process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        import threading

        import psutil

        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


class _PhaseTimes:
    """A quiet `Reporter` that keeps each phase's wall time."""

    def __init__(self):
        from pipeline.data.summary import Reporter

        class Recording(Reporter):
            def phase(inner, name: str) -> None:  # noqa: N805 (closure over the outer instance)
                now = time.perf_counter()
                self.times[name] = now - inner.last
                inner.last = now

        self.times: dict[str, float] = {}
        self.reporter = Recording(quiet=True)


ALL_FILTERS = [
    {"type": "length"},
    *(
        {"type": kind, "dry_run": True}
        for kind in ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb", "pii", "decontaminate")
    ),
]


def run_stage(root: str, sources: list[dict], name: str, quiet: bool = True, data: dict | None = None, reporter=None):
    # Driver-side imports stay outside the timed region: the stage imports `sora` (torch) only
    # when it trains the tokenizer, so that Ray workers do not pay for it.
    import sora.tokenizer  # noqa: F401
    from pipeline.config.run import RunConfig
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter

    config = RunConfig.model_validate(
        {"storage": {"root": root}, "data": {"name": name, "sources": sources, "max_error_rate": 0.05, **(data or {})}}
    )
    start = time.perf_counter()
    with PeakRSS() as rss:
        manifest = preprocess(config, reporter or Reporter(quiet=quiet))
    return manifest, time.perf_counter() - start, config, (rss.start, rss.peak)


def peer(texts: list[str], tokenizer_json: str, eos_id: int, seq_len: int, cores: int) -> dict:
    """HF datasets map(batched, num_proc) with the same tokenizer + numpy packing; no dedup."""
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    start = time.perf_counter()
    dataset = datasets.Dataset.from_dict({"text": texts})
    encode = _PeerEncoder(tokenizer_json)
    tokenized = dataset.map(encode, batched=True, batch_size=1000, num_proc=cores, remove_columns=["text"])
    ids = tokenized.with_format("numpy")["input_ids"]
    stream = np.concatenate([np.append(np.asarray(d, np.uint32), eos_id) for d in ids])
    block = seq_len + 1
    blocks = stream[: len(stream) // block * block].reshape(-1, block)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "tokens": int(len(stream)), "blocks": int(len(blocks))}


class _PeerEncoder:
    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json, self.tokenizer = tokenizer_json, None

    def __call__(self, batch):
        from tokenizers import Tokenizer

        if self.tokenizer is None:
            self.tokenizer = Tokenizer.from_str(self.tokenizer_json)
        encodings = self.tokenizer.encode_batch_fast(batch["text"], add_special_tokens=False)
        return {"input_ids": [e.ids for e in encodings]}

    def __getstate__(self):
        return {"tokenizer_json": self.tokenizer_json, "tokenizer": None}


def tokenizer_baseline(tokenizer, texts: list[str]) -> dict:
    """Single-core encode_batch on the documents of this run."""
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 256):
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i : i + 256], add_special_tokens=False))
    elapsed = time.perf_counter() - start
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def _texts(config) -> list[str]:
    """The same documents the stage read (normalization aside), read again on the driver."""
    from pipeline.data.readers import read_unit
    from pipeline.data.sources import UnitPart, list_all_units

    settings = config.storage.settings()
    texts = []
    for index, unit in enumerate(list_all_units(config.data.sources, settings)):
        table, _ = read_unit(UnitPart(unit, index, 0), config.data, settings)
        texts.extend(t for t in table["text"].to_pylist() if t)
    return texts


def measure(label: str, sources: list[dict], cores: int, with_peer: bool = True) -> dict:
    from pipeline.data.tokenizer_step import load_stored_tokenizer
    from pipeline.storage import open_store

    with tempfile.TemporaryDirectory() as tmp:
        manifest, wall, config, peak_rss = run_stage(f"file://{tmp}/store", sources, label)
        stats = manifest.stats.run.to_dict()
        stage_tokens = sum(stats["tokens"].values())
        tokenizer = load_stored_tokenizer(open_store(config.storage.root), manifest.tokenizer)
        texts = _texts(config)
        baseline = tokenizer_baseline(tokenizer, texts)
        peer_run = (
            peer(texts, tokenizer.to_str(), manifest.tokenizer.eos_id, config.data.seq_len, cores)
            if with_peer
            else None
        )
    stage_tps = stage_tokens / wall
    result = {
        "bench": "preprocess",
        "corpus": label,
        "source_mb": round(stats["source_bytes"] / 1e6, 2),
        "docs_read": stats["docs_read"],
        "docs_kept": stats["docs_kept"],
        "stage_wall_s": round(wall, 2),
        "stage_tokens": stage_tokens,
        "stage_tokens_per_s": round(stage_tps),
        "stage_mb_per_s": round(stats["source_bytes"] / 1e6 / wall, 3),
        "tokenizer_1core_tokens_per_s": round(baseline["tokens_per_s"]),
        "cores": cores,
        "ratio_stage_vs_cores_x_tokenizer": round(stage_tps / (cores * baseline["tokens_per_s"]), 4),
        "driver_rss_start_mb": round(peak_rss[0] / 2**20, 1),
        "driver_peak_rss_mb": round(peak_rss[1] / 2**20, 1),
        "driver_rss_growth_mb": round((peak_rss[1] - peak_rss[0]) / 2**20, 1),
    }
    if peer_run is not None:
        result["peer_wall_s"] = round(peer_run["seconds"], 2)
        result["peer_tokens_per_s"] = round(peer_run["tokens"] / peer_run["seconds"])
        result["stage_vs_peer"] = round(peer_run["seconds"] / wall, 3)
    print(json.dumps(result), flush=True)
    return result


def filters_cost(label: str, sources: list[dict], repeats: int) -> dict:
    """Stage with every filter vs the length filter alone, alternated; ratios mean ± stderr."""
    import statistics

    web = [{**source, "content": "web"} for source in sources]
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(repeats):
        for mode, filters in (("off", [{"type": "length"}]), ("on", ALL_FILTERS)):
            times = _PhaseTimes()
            with tempfile.TemporaryDirectory() as tmp:
                manifest, wall, _, _ = run_stage(
                    f"file://{tmp}/store", web, f"{label}-{mode}", data={"filters": filters}, reporter=times.reporter
                )
            stats = manifest.stats.run
            runs[mode].append(
                {
                    "mb_per_s": stats.source_bytes / 1e6 / wall,
                    "read_clean_s": times.times.get("read + clean", float("nan")),
                    "docs_kept": stats.docs_kept,
                    "docs_read": stats.docs_read,
                    "wall_s": wall,
                    "filters": dict(stats.filters),
                    "phases": {name: round(t, 2) for name, t in times.times.items()},
                    "rejected": dict(stats.rejected),
                }
            )

    def mean_stderr(values: list[float]) -> tuple[float, float]:
        spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
        return statistics.fmean(values), spread

    stage = [on["mb_per_s"] / off["mb_per_s"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    clean = [off["read_clean_s"] / on["read_clean_s"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    (stage_mean, stage_err), (clean_mean, clean_err) = mean_stderr(stage), mean_stderr(clean)
    on, off = runs["on"][-1], runs["off"][-1]
    result = {
        "bench": "preprocess-filters",
        "corpus": label,
        "repeats": repeats,
        "stage_mb_per_s_off": [round(r["mb_per_s"], 3) for r in runs["off"]],
        "stage_mb_per_s_on": [round(r["mb_per_s"], 3) for r in runs["on"]],
        "ratio_stage_on_vs_off": f"{stage_mean:.3f} ± {stage_err:.3f}",
        "read_clean_s_off": [round(r["read_clean_s"], 2) for r in runs["off"]],
        "read_clean_s_on": [round(r["read_clean_s"], 2) for r in runs["on"]],
        "ratio_read_clean_on_vs_off": f"{clean_mean:.3f} ± {clean_err:.3f}",
        "phases_s_off": off["phases"],
        "phases_s_on": on["phases"],
        "docs_read": on["docs_read"],
        "docs_kept_off": off["docs_kept"],
        "docs_kept_on": on["docs_kept"],
        "rejected_on": on["rejected"],
        "filter_counters_on": on["filters"],
    }
    print(json.dumps(result), flush=True)
    return result


def filter_speeds(label: str, sources: list[dict]) -> dict:
    """Each filter's own throughput inside the chain (one core, this process), on the corpus's
    documents in batches of 64, every filter seeing every document (dry runs): where the time goes."""
    from collections import Counter

    import pyarrow as pa

    from pipeline.config.run import RunConfig
    from pipeline.data.filters.chain import FilterChain
    from pipeline.data.readers import READ_SCHEMA

    config = RunConfig.model_validate(
        {"data": {"sources": [{**s, "content": "web"} for s in sources], "filters": ALL_FILTERS}}
    )
    texts = _texts(config)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    chain, seconds = FilterChain(config.data), Counter()

    class Timed:
        def __init__(self, inner) -> None:
            self.inner, self.label, self.spec = inner, inner.label, inner.spec

        def __call__(self, batch):
            start = time.perf_counter()
            verdict = self.inner(batch)
            seconds[self.label] += time.perf_counter() - start
            return verdict

    chain.filters = [Timed(f) for f in chain.filters]
    start = time.perf_counter()
    for i in range(0, len(texts), 64):
        batch = texts[i : i + 64]
        n = len(batch)
        columns = {"unit_index": [0] * n, "pid": [0] * n, "line": list(range(n)), "source_index": [0] * n}
        columns |= {"label": [None] * n, "text": batch, "reject": [None] * n, "raw": [b""] * n}
        chain.apply(pa.table(columns, schema=READ_SCHEMA), Counter())
    total = time.perf_counter() - start
    result = {
        "bench": "preprocess-filter-speeds",
        "corpus": label,
        "mb": round(megabytes, 1),
        "chain_mb_per_s_1core": round(megabytes / total, 2),
        # The first filter that splits words pays for the split (memoised for the others).
        "mb_per_s_1core": {name: round(megabytes / s, 1) for name, s in seconds.items()},
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="stdlib", help="comma list of: stdlib, site-packages")
    parser.add_argument("--scales", default="1,4,12", help="input-size multiples for the scaling run ('' to skip)")
    parser.add_argument("--unit-mb", type=float, default=8.0, help="size of the 1x scaling input, MB")
    parser.add_argument("--no-peer", action="store_true", help="skip the datasets.map peer")
    parser.add_argument(
        "--memory-docs",
        default="",
        help="comma list of document counts (e.g. 1790,17900,71600): driver peak RSS per count, same file count",
    )
    parser.add_argument("--memory-one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-all-filters", action="store_true", help="--memory-docs with every filter on (dry runs)"
    )
    parser.add_argument("--filters", default="", help="comma list of corpora (stdlib, site-packages): filter cost")
    parser.add_argument("--repeats", type=int, default=3, help="alternated on/off runs per corpus for --filters")
    args = parser.parse_args()

    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    ensure_ray(RayConfig())  # started once, outside the timed region
    import ray

    cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    for corpus in filter(None, args.corpora.split(",")):
        if corpus == "stdlib":
            measure("stdlib", [{"kind": "python-stdlib"}], cores, not args.no_peer)
        elif corpus == "site-packages":
            measure("site-packages", [{"kind": "text", "uri": str(site_packages())}], cores, not args.no_peer)
        else:
            sys.exit(f"unknown corpus {corpus}")

    for corpus in filter(None, args.filters.split(",")):
        if corpus not in ("stdlib", "site-packages"):
            sys.exit(f"unknown corpus {corpus}")
        with tempfile.TemporaryDirectory() as tmp:
            # site-packages: its first `--unit-mb` x 3 of .py files as jsonl (the whole folder holds
            # GBs of binaries); stdlib: this interpreter's .py files.
            sources = [{"kind": "python-stdlib"}]
            if corpus == "site-packages":
                write_prefix_corpus(Path(tmp) / "corpus", int(3 * args.unit_mb * 1e6))
                sources = [{"kind": "jsonl", "uri": f"{tmp}/corpus"}]
            filters_cost(corpus, sources, args.repeats)
            filter_speeds(corpus, sources)

    if args.memory_one:
        with tempfile.TemporaryDirectory() as tmp:
            written = write_chunk_corpus(Path(tmp) / "corpus", args.memory_one)
            source = {"kind": "jsonl", "uri": f"{tmp}/corpus"}
            # --memory-all-filters: every filter runs on every document (dry runs, content web).
            data = {"filters": ALL_FILTERS} if args.memory_all_filters else None
            manifest, wall, _, (start, peak) = run_stage(
                f"file://{tmp}/store", [{**source, "content": "web"} if data else source], "chunks", data=data
            )
        stats = manifest.stats.run.to_dict()
        print(
            json.dumps(
                {
                    "docs": written,
                    "docs_kept": stats["docs_kept"],
                    "source_mb": round(stats["source_bytes"] / 1e6, 2),
                    "stage_wall_s": round(wall, 2),
                    "driver_rss_start_mb": round(start / 2**20, 1),
                    "driver_rss_growth_mb": round((peak - start) / 2**20, 1),
                }
            )
        )
        return
    memory = []
    for docs in [int(d) for d in args.memory_docs.split(",") if d]:
        # A fresh driver per count: RSS left over from an earlier run would hide (or fake) growth.
        command = [sys.executable, __file__, "--corpora", "", "--scales", "", "--memory-one", str(docs)]
        command += ["--memory-all-filters"] if args.memory_all_filters else []
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        print(json.dumps({"bench": "preprocess-driver-memory-point", **result}), flush=True)
        memory.append((result["docs"], result["driver_rss_growth_mb"], result["source_mb"]))
    if memory:
        print(
            json.dumps(
                {
                    "bench": "preprocess-driver-memory",
                    "docs": [d for d, _, _ in memory],
                    "source_mb": [mb for _, _, mb in memory],
                    "driver_rss_growth_mb": [g for _, g, _ in memory],
                    "growth_spread_mb": round(max(g for _, g, _ in memory) - min(g for _, g, _ in memory), 1),
                }
            ),
            flush=True,
        )

    scales = [float(s) for s in args.scales.split(",") if s]
    if not scales:
        return
    fixed = float("inf")  # fixed start-up cost: the stage on a 0.1 MB corpus (best of two, warm)
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            write_prefix_corpus(Path(tmp) / "corpus", int(0.1e6))
            fixed = min(fixed, run_stage(f"file://{tmp}/store", [{"kind": "jsonl", "uri": f"{tmp}/corpus"}], "tiny")[1])
    scaling = []
    for scale in scales:
        with tempfile.TemporaryDirectory() as tmp:
            write_prefix_corpus(Path(tmp) / "corpus", int(scale * args.unit_mb * 1e6))
            result = measure(
                f"site-packages-prefix-{scale:g}x", [{"kind": "jsonl", "uri": f"{tmp}/corpus"}], cores, not args.no_peer
            )
            scaling.append((scale, result["stage_wall_s"], result["source_mb"]))
    (_, w0, mb0), (_, w1, mb1) = scaling[0], scaling[-1]
    print(
        json.dumps(
            {
                "bench": "preprocess-scaling",
                "fixed_startup_s": round(fixed, 2),
                "mb": {f"{s:g}x": mb for s, _, mb in scaling},
                "wall_s": {f"{s:g}x": w for s, w, _ in scaling},
                "input_ratio": round(mb1 / mb0, 2),
                "wall_ratio_minus_fixed": round((w1 - fixed) / max(1e-9, w0 - fixed), 2),
                "growth_vs_input": round(((w1 - fixed) / max(1e-9, w0 - fixed)) / (mb1 / mb0), 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
