"""Benchmark of the data stage against raw tokenizer throughput, measured in the same run.

For each corpus: run the whole Ray Data stage (read, clean, dedup, train tokenizer, tokenize, pack,
write shards, publish) into a fresh local store and measure end-to-end tokens/s; then, in this
process on one core, time HF `tokenizers` `encode_batch` on the same documents with the same
tokenizer. Prints one JSON line per measurement and the ratio

    stage tokens/s / (cores x single-core tokenizer tokens/s)

i.e. the fraction of the machine's pure-tokenization capacity the full stage achieves.
`--scales` also measures wall time at several input sizes (prefixes of site-packages .py files).

    python bench/preprocess.py                          # stdlib + scaling 1x/4x/16x of 4 MB
    python bench/preprocess.py --corpora stdlib,site-packages --unit-mb 8
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_stage(root: str, sources: list[dict], name: str):
    from pipeline.config.run import RunConfig
    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter

    config = RunConfig.model_validate(
        {"storage": {"root": root}, "data": {"name": name, "sources": sources, "max_error_rate": 0.05}}
    )
    start = time.perf_counter()
    manifest = preprocess(config, Reporter(quiet=True))
    return manifest, time.perf_counter() - start, config


def tokenizer_baseline(manifest: dict, config) -> dict:
    """Single-core encode_batch on the kept documents of this run (read back from the shards' text)."""
    from pipeline.data.tokenizer_step import load_stored_tokenizer
    from pipeline.storage import open_store

    store = open_store(config.storage.root)
    tokenizer = load_stored_tokenizer(store, manifest["tokenizer"])
    texts = _kept_texts(config)
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 256):
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i : i + 256], add_special_tokens=False))
    elapsed = time.perf_counter() - start
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def _kept_texts(config) -> list[str]:
    """The same documents the stage read (normalization aside), read again on the driver."""
    from pipeline.data.readers import UnitReader
    from pipeline.data.sources import list_all_units

    reader = UnitReader(config.data, config.storage.settings())
    texts = []
    for unit in list_all_units(config.data.sources, config.storage.settings()):
        texts.extend(r["text"] for r in reader(unit) if r["text"])
    return texts


def measure(label: str, sources: list[dict], cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest, wall, config = run_stage(f"file://{tmp}/store", sources, label)
        stats = manifest["stats"]["run"]
        stage_tokens = sum(stats["tokens"].values())
        baseline = tokenizer_baseline(manifest, config)
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
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="stdlib", help="comma list of: stdlib, site-packages")
    parser.add_argument("--scales", default="1,4,16", help="input-size multiples for the scaling run ('' to skip)")
    parser.add_argument("--unit-mb", type=float, default=4.0, help="size of the 1x scaling input, MB")
    args = parser.parse_args()

    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    ensure_ray(RayConfig())  # started once, outside the timed region
    import ray

    cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    for corpus in filter(None, args.corpora.split(",")):
        if corpus == "stdlib":
            measure("stdlib", [{"kind": "python-stdlib"}], cores)
        elif corpus == "site-packages":
            measure("site-packages", [{"kind": "text", "uri": str(site_packages())}], cores)
        else:
            sys.exit(f"unknown corpus {corpus}")

    scaling = []
    for scale in [int(s) for s in args.scales.split(",") if s]:
        with tempfile.TemporaryDirectory() as tmp:
            write_prefix_corpus(Path(tmp) / "corpus", int(scale * args.unit_mb * 1e6))
            result = measure(f"site-packages-prefix-{scale}x", [{"kind": "jsonl", "uri": f"{tmp}/corpus"}], cores)
            scaling.append((scale, result["stage_wall_s"]))
    if scaling:
        base_scale, base_wall = scaling[0]
        print(
            json.dumps(
                {
                    "bench": "preprocess-scaling",
                    "unit_mb": args.unit_mb,
                    "wall_s": {f"{s}x": w for s, w in scaling},
                    "wall_ratio_vs_1x": {f"{s}x": round(w / base_wall, 2) for s, w in scaling},
                    "ideal_ratio": {f"{s}x": s / base_scale for s, _ in scaling},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
