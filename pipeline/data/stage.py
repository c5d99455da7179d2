"""The data stage: sources -> Ray Data (read, clean, fingerprint) -> global dedup -> tokenizer ->
tokenize + split + pack + write shards -> publish a manifest version.

The same function serves the first build and every incremental refresh: it diffs the sources'
fingerprints against the latest published manifest, processes only new or changed files,
deduplicates them against everything already published, and appends shards under a new run id.
No new sources -> no new version. One writer at a time (a lease with a fencing epoch).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..config.run import RunConfig
from ..errors import UserError
from ..faults import fail_point
from ..ray_runtime import ensure_ray
from ..storage import open_store
from ..storage.lease import acquire_lease
from .dedup import DedupIndex
from .manifest import SCHEMA_VERSION, dataset_prefix, next_version, publish, read_latest
from .quarantine import check_error_rates, rejects_bytes
from .readers import UnitReader
from .sources import fingerprint, list_all_units
from .steps import CleanBatch
from .summary import Reporter
from .tokenize_pack import SPLITS, PackWriteGroup, TokenizeBatch, assign_split
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


def _build(config, store, units, new_units, parent, given, run_id, config_sha, reporter) -> dict[str, Any]:
    import ray.data

    data, settings = config.data, config.storage.settings()
    prefix = dataset_prefix(data.name)
    ensure_ray(config.ray)
    records = (
        ray.data.from_items(new_units)
        .flat_map(UnitReader(data, settings))
        .map_batches(CleanBatch(data), batch_format="pandas", batch_size=256)
        .materialize()
    )
    reporter.phase("read + clean")
    meta = records.select_columns(["doc_key", "unit", "source_index", "reject"]).to_pandas()
    single_doc = {i for i, s in enumerate(data.sources) if s.kind in ("text", "python-stdlib")}
    check_error_rates(meta, data.max_error_rate, single_doc)
    rejected = records.map_batches(_rejected_rows, batch_format="pyarrow").to_pandas()
    if len(rejected):
        store.write(f"{prefix}/rejects/{run_id}/rejects.arrow", rejects_bytes(rejected))

    # Global dedup over compact fingerprints, in doc_key order (deterministic).
    live = records.map_batches(_live_rows, batch_format="pyarrow")
    prints = live.select_columns(["doc_key", "hash", "minhash"]).to_pandas().sort_values("doc_key", kind="stable")
    index = DedupIndex(data.dedup)
    for key in (parent or {}).get("dedup_index", []):
        index.load(store.read(key))
    decisions = [index.decide(h, m) for h, m in zip(prints["hash"], prints["minhash"], strict=True)]
    prints["decision"] = decisions
    keep = set(prints.loc[prints["decision"] == "keep", "doc_key"])
    keep_keys = pa.array(sorted(keep), pa.string())
    kept = live.map_batches(
        lambda batch: batch.filter(pc.is_in(batch["doc_key"], value_set=keep_keys)), batch_format="pyarrow"
    ).materialize()
    reporter.phase("dedup")
    if not keep and parent is None:
        raise UserError(f"dataset {data.name!r}: no documents survived filtering and dedup; nothing to publish")

    # Only (hash, size) of kept documents reach the driver: the texts stay in Ray.
    sizes = kept.map_batches(_sizes, batch_format="pyarrow").to_pandas()
    if sizes.empty:  # a refresh whose documents were all duplicates
        sizes = pd.DataFrame({"hash": pd.Series(dtype=object), "n_bytes": pd.Series(dtype="int64")})
    sizes["split"] = [assign_split(h, data) for h in sizes["hash"]]
    if parent is not None:
        tokenizer = load_stored_tokenizer(store, parent["tokenizer"])
        tokenizer_block = parent["tokenizer"]
    else:
        if given is None:
            given = train_tokenizer(data, _tokenizer_sample(kept, sizes, data))
        tokenizer, eos_id, pad_id = given
        tokenizer_block = store_tokenizer(store, prefix, tokenizer, eos_id, pad_id)
    reporter.phase("tokenizer")

    groups = _group_counts(sizes, data, tokenizer_block["vocab_size"])
    shards = pd.DataFrame()
    if keep:
        tokenized = kept.map_batches(
            TokenizeBatch,
            fn_constructor_args=(data, tokenizer.to_str(), groups),
            batch_format="pyarrow",
            batch_size=256,
            compute=ray.data.ActorPoolStrategy(size=_cpus()),  # one tokenizer actor per CPU
        ).materialize()
        reporter.phase("tokenize")
        writer = PackWriteGroup(
            data,
            settings,
            store.root_uri,
            f"{prefix}/shards/{run_id}",
            tokenizer_block["vocab_size"],
            tokenizer_block["eos_id"],
            tokenizer_block["pad_id"],
        )

        def write_group(group: pd.DataFrame) -> pd.DataFrame:
            return writer(group)

        shards = tokenized.groupby("group").map_groups(write_group, batch_format="pandas").to_pandas()
        shards = shards.sort_values("key").reset_index(drop=True)
    reporter.phase("pack + write")

    index_key = f"{prefix}/dedup/{run_id}.arrow"
    store.write(index_key, index.serialize())
    return _manifest(config, store, units, parent, run_id, config_sha, tokenizer_block, shards, meta, prints, index_key)


def _cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _rejected_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch["reject"]))


def _live_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch["reject"]))


def _sizes(batch: pa.Table) -> pa.Table:
    return pa.table({"hash": batch["hash"], "n_bytes": pc.binary_length(batch["text"])})


def _tokenizer_sample(kept, sizes: pd.DataFrame, data) -> list[tuple[bytes, str]]:
    """(hash, text) of the tokenizer's training sample: training documents in sha256(hash) order up to
    `sample_bytes`. Chosen from sizes on the driver; only the chosen texts are fetched from Ray."""
    train = sizes[sizes["split"] == "train"]
    order = sorted(zip(train["hash"], train["n_bytes"], strict=True), key=lambda p: hashlib.sha256(p[0]).digest())
    chosen, total = [], 0
    for digest, size in order:
        chosen.append(digest)
        total += size
        if total >= data.tokenizer.sample_bytes:
            break
    wanted = pa.array(chosen, pa.binary(16))
    texts = kept.map_batches(
        lambda b: b.select(["hash", "text"]).filter(pc.is_in(b["hash"], value_set=wanted)), batch_format="pyarrow"
    ).to_pandas()
    return list(zip(texts["hash"], texts["text"], strict=True))


def _group_counts(sizes: pd.DataFrame, data, vocab_size: int) -> dict[str, int]:
    """Shards per split, from the kept text volume (about 3 bytes of text per token)."""
    itemsize = 2 if vocab_size <= 65536 else 4
    counts = {}
    for split in SPLITS:
        text_bytes = int(sizes.loc[sizes["split"] == split, "n_bytes"].sum())
        counts[split] = max(1, -(-int(text_bytes / 3 * itemsize) // data.shard_bytes))
    return counts


def _manifest(
    config, store, units, parent, run_id, config_sha, tokenizer_block, shards, meta, prints, index_key
) -> dict:
    data = config.data
    entries = {split: [] for split in SPLITS}
    for row in shards.to_dict("records"):
        entries[row["split"]].append({k: row[k] for k in ("uri", "key", "rows", "tokens", "bytes", "sha256", "docs")})
    old = parent["shards"] if parent else {split: [] for split in SPLITS}
    rejected = meta["reject"].dropna().value_counts().to_dict()
    decisions = prints["decision"].value_counts().to_dict() if len(prints) else {}
    run_stats = {
        "docs_read": int(len(meta)),
        "docs_kept": int(decisions.get("keep", 0)),
        "rejected": {k: int(v) for k, v in sorted(rejected.items())},
        "duplicates": {"exact": int(decisions.get("exact", 0)), "near": int(decisions.get("near", 0))},
        "tokens": {s: int(sum(e["tokens"] for e in entries[s])) for s in SPLITS},
        "blocks": {s: int(sum(e["rows"] for e in entries[s])) for s in ("train", "val")},
        "source_bytes": int(sum(u["size"] for u in units if u["uri"] in set(meta["unit"]))),
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
        "dedup_index": (parent or {}).get("dedup_index", []) + [index_key],
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
