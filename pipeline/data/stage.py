"""The data stage: sources -> Ray tasks over Arrow blocks (read, clean, fingerprint) -> global dedup
(hash-partitioned shuffle) -> tokenizer -> tokenize + split (shuffle by shard group) -> pack + write
shards -> publish a manifest version. `blocks.py` says why tasks and not a Ray Data pass per step.
This module takes the lease and diffs against LATEST; the build itself is the phases of `phases.py`
(read, dedup, tokenizer, tokenize + pack, publish) run in order over one `BuildState`.

The same function serves the first build and every incremental refresh: it diffs the sources'
fingerprints against the latest published manifest, processes only new or changed files,
deduplicates them against everything already published, and appends shards under a new run id.
No new sources -> no new version. One writer at a time (a lease with a fencing epoch).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from concurrent.futures import wait
from datetime import datetime, timezone

from ..config.run import RunConfig
from ..errors import UserError
from ..keys import DatasetKeys
from ..ray_runtime import ensure_ray
from ..records import Manifest, read_latest, read_source_index, unindexed
from ..storage import open_store
from ..storage.lease import acquire_lease
from . import placement
from .build_state import BuildState
from .minhash import LEGACY_SCHEME, SCHEME
from .phases import PHASES
from .sources import list_all_units
from .summary import Reporter
from .tokenizer_step import given_tokenizer

# Fields whose change makes new shards incompatible with a published version's shards.
_COMPATIBILITY_FIELDS = ("seq_len", "normalize", "filters", "dedup", "tokenizer", "split")


def processing_sha256(config: RunConfig) -> str:
    data = config.data.model_dump(include=set(_COMPATIBILITY_FIELDS) | {"word_tokenizer", "max_doc_bytes"})
    applied = [f for f in config.data.filters if _applies_somewhere(f, config.data)]
    if len(applied) == 1 and applied[0].type == "length":
        # The chain of a dataset built before there was one (a length filter; PII redaction does
        # not touch its code/prose sources): hashed in the earlier form, so that dataset refreshes.
        length = applied[0]
        data.pop("word_tokenizer")
        filters = {"min_chars": length.min_chars, "max_chars": length.max_chars}
        data["filters"] = {**filters, "max_doc_bytes": data.pop("max_doc_bytes")}
    else:
        data["filters"] = [f.model_dump(mode="json") for f in applied]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _applies_somewhere(spec, data) -> bool:
    """Whether a filter of the chain applies to at least one of the configured sources."""
    return any(s.content_kind in spec.applies_to() and spec.label not in s.skip_filters for s in data.sources)


def preprocess(config: RunConfig, reporter: Reporter | None = None) -> Manifest:
    """Build or refresh the dataset `config.data.name`; returns the manifest that is now LATEST."""
    reporter = reporter or Reporter()
    data, settings = config.data, config.storage.settings()
    store = open_store(config.storage.root, settings)
    store.check()
    units = list_all_units(data.sources, settings)  # missing sources fail here, before any work
    given = given_tokenizer(data)
    keys = DatasetKeys(data.name)
    lease = acquire_lease(store, keys.lease, data.lease_seconds, what=f"refresh of dataset {data.name!r}")
    try:
        with lease.keep_alive(data.lease_seconds) as heartbeat:
            return _refresh(config, store, units, given, heartbeat, reporter)
    finally:
        lease.release()


def _refresh(config, store, units, given, heartbeat, reporter) -> Manifest:
    """Under the lease: diff sources against LATEST, build what is new (the phases), publish."""
    data = config.data
    parent, parent_etag = read_latest(store, data.name)
    config_sha = processing_sha256(config)
    if parent is not None and parent.config_sha256 != config_sha:
        raise UserError(
            f"dataset {data.name!r} v{parent.version} was built with different processing settings "
            f"({', '.join(_COMPATIBILITY_FIELDS)}); use a new dataset name to rebuild"
        )
    # The parent's source files as one Arrow table (its index file, or the JSON list of a schema 1
    # manifest), diffed by (uri, size, version) with a join: no object per published file.
    new_units = unindexed(units, read_source_index(store, parent) if parent else None)
    if not new_units:
        reporter.say(f"dataset {data.name!r}: no new or changed sources; v{parent.version} is current")
        return parent
    # Only new documents are compared with the parent's signatures: an unchanged dataset of an
    # older scheme stays usable (a rerun of `sora run` after an upgrade is still a no-op).
    check_dedup_scheme(parent, data)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    reporter.start(
        f"dataset {data.name!r}: {len(new_units)} new/changed source files "
        f"({sum(u.size for u in new_units) / 1e6:.1f} MB), run {run_id}"
    )
    ensure_ray(config.ray)
    placement.configure(data)
    # Scratch left by a crashed build: this one holds the lease, so no other build is using it.
    store.delete_prefix(DatasetKeys(data.name).scratch)
    state = BuildState(
        config=config,
        store=store,
        settings=config.storage.settings(),
        lease=heartbeat,
        run_id=run_id,
        config_sha256=config_sha,
        units=units,
        new_units=new_units,
        parent=parent,
        parent_etag=parent_etag,
        given=given,
        reporter=reporter,
        cpus=placement.cpus(),
    )
    try:
        for phase in PHASES:
            phase(state)
    finally:
        _clean_up(state, reporter)
    return state.manifest


def _clean_up(state: BuildState, reporter: Reporter) -> None:
    """Delete the build's scratch files, after its rejects/index writers are done (a failed build
    must not leave them writing). A failure to delete is reported, never raised over the build's
    own outcome: the next build deletes what is left."""
    if state.writers is not None:
        wait([state.writers])
    try:
        state.store.delete_prefix(state.scratch.prefix)
    except Exception as error:  # noqa: BLE001 (cleanup: the build's own error, if any, is what matters)
        reporter.say(f"could not delete {state.store.uri(state.scratch.prefix)} ({error}); the next build will")


def check_dedup_scheme(parent: Manifest | None, data) -> None:
    """A refresh compares new documents with the parent's stored MinHash signatures, so they must
    come from this code's scheme. They cannot be recomputed: the index keeps no text, and the
    published sources may have changed or gone (re-reading them all would also make a refresh
    O(corpus)). So a parent of another scheme is one clear error, before any work."""
    if parent is None or not data.dedup.near or not parent.dedup_index:
        return
    scheme = parent.dedup_scheme or LEGACY_SCHEME  # manifests before schemes were recorded
    if scheme != SCHEME:
        raise UserError(
            f"dataset {data.name!r} v{parent.version} was deduplicated with MinHash scheme {scheme!r}, "
            f"this version computes {SCHEME!r} (signatures are not comparable); use a new dataset name to rebuild"
        )
