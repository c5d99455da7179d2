"""The data stage: sources -> Ray tasks over Arrow blocks (read, clean, fingerprint) -> global dedup
(hash-partitioned shuffle) -> tokenizer -> tokenize + split (shuffle by shard group) -> pack + write
shards -> publish a manifest version. `blocks.py` says why tasks and not a Ray Data pass per step.

The same function serves the first build and every incremental refresh: it diffs the sources'
fingerprints against the latest published manifest, processes only new or changed files,
deduplicates them against everything already published, and appends shards under a new run id.
No new sources -> no new version. One writer at a time (a lease with a fencing epoch).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ..config.run import RunConfig
from ..errors import UserError
from ..faults import fail_point
from ..ray_runtime import ensure_ray
from ..storage import open_store
from ..storage.lease import acquire_lease
from .blocks import Blocks, reduce_partitions
from .dedup import bands
from .dedup_stage import deduplicate, index_keys, kept_records, write_index
from .manifest import SCHEMA_VERSION, dataset_prefix, next_version, publish, read_latest
from .minhash import LEGACY_SCHEME, SCHEME
from .quarantine import check_error_rates, write_rejects
from .read_stage import read_records, split_bytes_and_sample
from .sources import fingerprint, list_all_units
from .summary import Reporter
from .tokenize_pack import SPLITS, PackWriteGroup, tokenize_partitions, write_groups
from .tokenizer_step import given_tokenizer, load_stored_tokenizer, store_tokenizer, train_tokenizer

# Fields whose change makes new shards incompatible with a published version's shards.
_COMPATIBILITY_FIELDS = ("seq_len", "normalize", "filters", "dedup", "tokenizer", "split")


def processing_sha256(config: RunConfig) -> str:
    data = config.data.model_dump(include=set(_COMPATIBILITY_FIELDS))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def preprocess(config: RunConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Build or refresh the dataset `config.data.name`; returns the manifest that is now LATEST."""
    reporter = reporter or Reporter()
    data, settings = config.data, config.storage.settings()
    store = open_store(config.storage.root, settings)
    store.check()
    units = list_all_units(data.sources, settings)  # missing sources fail here, before any work
    given = given_tokenizer(data)
    prefix = dataset_prefix(data.name)
    lease = acquire_lease(store, f"{prefix}/_lease", data.lease_seconds, what=f"refresh of dataset {data.name!r}")
    try:
        with lease.keep_alive(data.lease_seconds) as heartbeat:
            return _refresh(config, store, units, given, heartbeat, reporter)
    finally:
        lease.release()


def _refresh(config, store, units, given, heartbeat, reporter) -> dict[str, Any]:
    """Under the lease: diff sources against LATEST, build what is new, publish."""
    data = config.data
    parent, parent_etag = read_latest(store, data.name)
    config_sha = processing_sha256(config)
    if parent is not None and parent["config_sha256"] != config_sha:
        raise UserError(
            f"dataset {data.name!r} v{parent['version']} was built with different processing settings "
            f"({', '.join(_COMPATIBILITY_FIELDS)}); use a new dataset name to rebuild"
        )
    known = {fingerprint(s) for s in parent["sources"]} if parent else set()
    new_units = [u for u in units if fingerprint(u) not in known]
    if not new_units:
        reporter.say(f"dataset {data.name!r}: no new or changed sources; v{parent['version']} is current")
        return parent
    # Only new documents are compared with the parent's signatures: an unchanged dataset of an
    # older scheme stays usable (a rerun of `sora run` after an upgrade is still a no-op).
    check_dedup_scheme(parent, data)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    reporter.start(
        f"dataset {data.name!r}: {len(new_units)} new/changed source files "
        f"({sum(u['size'] for u in new_units) / 1e6:.1f} MB), run {run_id}"
    )
    manifest = _build(config, store, units, new_units, parent, given, run_id, config_sha, reporter)
    fail_point("after_shards")
    publish(store, manifest, parent_etag, heartbeat)
    reporter.finish(manifest)
    return manifest


def check_dedup_scheme(parent: dict | None, data) -> None:
    """A refresh compares new documents with the parent's stored MinHash signatures, so they must
    come from this code's scheme. They cannot be recomputed: the index keeps no text, and the
    published sources may have changed or gone (re-reading them all would also make a refresh
    O(corpus)). So a parent of another scheme is one clear error, before any work."""
    if parent is None or not data.dedup.near or not parent.get("dedup_index"):
        return
    scheme = parent.get("dedup_scheme", LEGACY_SCHEME)  # manifests before schemes were recorded
    if scheme != SCHEME:
        raise UserError(
            f"dataset {data.name!r} v{parent['version']} was deduplicated with MinHash scheme {scheme!r}, "
            f"this version computes {SCHEME!r} (signatures are not comparable); use a new dataset name to rebuild"
        )


def _build(config, store, units, new_units, parent, given, run_id, config_sha, reporter) -> dict[str, Any]:
    import ray

    data, settings = config.data, config.storage.settings()
    prefix = dataset_prefix(data.name)
    ensure_ray(config.ray)
    cpus = _cpus()

    # The LSH band layout costs the driver ~0.4 s (scipy): computed while the workers read.
    executor = ThreadPoolExecutor(1, thread_name_prefix="lsh-layout")
    layout = executor.submit(bands, data.dedup.threshold, data.dedup.num_perm)
    executor.shutdown(wait=False)  # the thread ends with its one job
    records, counts = read_records(new_units, data, settings, data.read_blocks or 3 * cpus, reporter.track)
    reporter.phase("read + clean")
    single_doc = {i for i, s in enumerate(data.sources) if s.kind in ("text", "python-stdlib")}
    check_error_rates(counts["units"], new_units, data.max_error_rate, single_doc)

    removed, duplicates = deduplicate(records, store, settings, parent, data.dedup, cpus, layout, counts["live"])
    reporter.phase("dedup")
    # Tokenizing is the longest step: kept blocks are cut (by text bytes) into about 4 per core so
    # that the last tasks finish together.
    pieces = max(1, -(-4 * cpus // len(records)))
    kept = Blocks([ref for part in records.partition(_kept_rows, pieces, pieces, each=removed) for ref in part])
    docs_kept = counts["live"] - duplicates["removed"]
    rejects_key = f"{prefix}/rejects/{run_id}/rejects.arrow"
    if not docs_kept and parent is None:
        ray.get(write_rejects(records, removed, new_units, store, rejects_key, settings))  # says why
        raise UserError(
            f"dataset {data.name!r}: no documents survived filtering and dedup; nothing to publish "
            f"(every record is in {store.uri(rejects_key)})"
        )

    want_sample = parent is None and given is None
    split_bytes, sample = split_bytes_and_sample(kept, counts["live_bytes"], data, want_sample)
    # Rejects and the dedup index are written by tasks while the driver trains the tokenizer.
    rejects = write_rejects(records, removed, new_units, store, rejects_key, settings)
    index = write_index(records, removed, store, settings, f"{prefix}/dedup/{run_id}", data.dedup)
    if parent is not None:
        tokenizer = load_stored_tokenizer(store, parent["tokenizer"])
        tokenizer_block = parent["tokenizer"]
    else:
        tokenizer, eos_id, pad_id = train_tokenizer(data, sample) if want_sample else given
        tokenizer_block = store_tokenizer(store, prefix, tokenizer, eos_id, pad_id)
    reporter.phase("tokenizer")

    groups = _group_counts(split_bytes, data, tokenizer_block["vocab_size"])
    entries = []
    if docs_kept:
        writer = PackWriteGroup(
            data,
            settings,
            store.root_uri,
            f"{prefix}/shards/{run_id}",
            tokenizer_block["vocab_size"],
            tokenizer_block["eos_id"],
            tokenizer_block["pad_id"],
        )
        parts = max(1, min(sum(groups.values()), 4 * cpus))
        partitions = kept.partition(tokenize_partitions, parts, data, tokenizer.to_str(), groups, parts)
        reporter.track(partitions[0], "tokenize")  # one output of each map task
        shards = pa.concat_tables(ray.get(reduce_partitions(write_groups, partitions, writer)))
        entries = sorted(shards.to_pylist(), key=lambda e: e["key"])
    ray.get(rejects)
    keys = index_keys(index)
    reporter.phase("tokenize + pack + write")
    stats = {
        "docs_read": counts["docs_read"],
        "docs_kept": int(docs_kept),
        "rejected": {k: int(v) for k, v in sorted(counts["rejected"].items())},
        "duplicates": {r: duplicates[r] for r in ("exact", "near")},
        "source_bytes": int(sum(new_units[i]["size"] for i in counts["units"] if counts["units"][i]["records"])),
    }
    return _manifest(config, store, units, parent, run_id, config_sha, tokenizer_block, entries, stats, keys)


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _kept_rows(batch: pa.Table, removed: pa.Table, pieces: int) -> list[pa.Table]:
    """The kept records of a block, cut into `pieces` runs of about equal text bytes."""
    kept = kept_records(batch, removed).drop_columns(["reject", "raw"])
    ends = np.cumsum(kept["n_bytes"].to_numpy())
    cuts = np.searchsorted(ends, np.arange(1, pieces) * (ends[-1] if len(ends) else 0) / pieces)
    bounds = np.r_[0, cuts, kept.num_rows]
    # `take`, not `slice`: a slice would carry (and serialize) the whole block's buffers.
    return [kept.take(pa.array(np.arange(a, b))) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _group_counts(split_bytes: dict[str, int], data, vocab_size: int) -> dict[str, int]:
    """Shards per split, from the kept text volume (about 3 bytes of text per token)."""
    itemsize = 2 if vocab_size <= 65536 else 4
    return {split: max(1, -(-int(split_bytes[split] / 3 * itemsize) // data.shard_bytes)) for split in SPLITS}


def _manifest(config, store, units, parent, run_id, config_sha, tokenizer_block, shards, stats, new_index) -> dict:
    data = config.data
    entries = {split: [] for split in SPLITS}
    for row in shards:
        entries[row["split"]].append({k: row[k] for k in ("uri", "key", "rows", "tokens", "bytes", "sha256", "docs")})
    old = parent["shards"] if parent else {split: [] for split in SPLITS}
    run_stats = {
        "docs_read": stats["docs_read"],
        "docs_kept": stats["docs_kept"],
        "rejected": stats["rejected"],
        "duplicates": stats["duplicates"],
        "tokens": {s: int(sum(e["tokens"] for e in entries[s])) for s in SPLITS},
        "blocks": {s: int(sum(e["rows"] for e in entries[s])) for s in ("train", "val")},
        "source_bytes": stats["source_bytes"],
    }
    totals = _accumulate(parent["stats"]["total"] if parent else None, run_stats)
    return {
        "schema_version": SCHEMA_VERSION,
        "version": next_version(store, data.name),
        "parent_version": parent["version"] if parent else None,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "dataset": data.name,
        "seq_len": data.seq_len,
        "dtype": "uint16" if tokenizer_block["vocab_size"] <= 65536 else "uint32",
        "tokenizer": tokenizer_block,
        "sources": [
            {"uri": u["uri"], "size": u["size"], "version": u["version"], "source_index": u["source_index"]}
            for u in units
        ],
        "shards": {split: old.get(split, []) + entries[split] for split in SPLITS},
        "stats": {"run": run_stats, "total": totals},
        "dedup_index": (parent or {}).get("dedup_index", []) + new_index,
        "dedup_scheme": SCHEME,
        "config_sha256": config_sha,
        "config": config.data.model_dump(mode="json"),
        "run_id": run_id,
        "runs": (parent or {}).get("runs", []) + [run_id],
    }


def _accumulate(total: dict | None, run: dict) -> dict:
    if total is None:
        return json.loads(json.dumps(run))
    out = {}
    for key, value in run.items():
        if isinstance(value, dict):
            out[key] = {
                k: total.get(key, {}).get(k, 0) + value.get(k, 0) for k in sorted(set(total.get(key, {})) | set(value))
            }
        else:
            out[key] = total.get(key, 0) + value
    return out
