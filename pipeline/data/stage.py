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

from ..config.data import SourceConfig
from ..config.filters import ALL_CONTENT
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

# Filter types that split words (`data.word_tokenizer` matters only with one of them).
_WORD_FILTERS = {"gopher_quality", "gopher_repetition", "c4", "fineweb"}
# Fields whose change makes new shards incompatible with a published version's shards.
_COMPATIBILITY_FIELDS = ("seq_len", "normalize", "filters", "dedup", "tokenizer", "split")


def processing_sha256(config: RunConfig) -> str:
    """What a refresh must share with the published versions: the settings that decide which
    documents are kept and how they become tokens. The filter chain enters as the chain each kind
    of content gets (entries in order, without names or dry runs, which decide nothing), so that
    adding a source of a new kind does not change it, and moving a filter to another kind does."""
    data = config.data.model_dump(include=set(_COMPATIBILITY_FIELDS) | {"max_doc_bytes"})
    data["filters"] = {
        kind: [
            f.model_dump(mode="json", exclude={"name", "content", "dry_run"})
            for f in config.data.filters
            # Decontamination checks each build's new documents against that build's index: its
            # tasks and settings may change between refreshes (a benchmark added) without making
            # the published documents differ from new ones in any other way.
            if kind in f.applies_to() and not f.dry_run and f.type != "decontaminate"
        ]
        for kind in ALL_CONTENT
    }
    if any(f.type in _WORD_FILTERS for f in config.data.filters if not f.dry_run):
        data["word_tokenizer"] = config.data.word_tokenizer
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def legacy_sha256(config: RunConfig) -> str | None:
    """The processing hash of the same settings as a build before the filter chain computed it
    (`filters: {min_chars, max_chars, max_doc_bytes}`), None without a length filter."""
    length = config.data.length_filter()
    if length is None:
        return None
    data = config.data.model_dump(include=set(_COMPATIBILITY_FIELDS))
    data["filters"] = {"min_chars": length.min_chars, "max_chars": length.max_chars}
    data["filters"]["max_doc_bytes"] = config.data.max_doc_bytes
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def same_processing(parent: Manifest, config: RunConfig, config_sha: str) -> bool:
    """Whether `config` may refresh `parent`: the same processing hash, or `parent` was built before
    the filter chain with the same settings and nothing but the length filter applies to the
    content of its sources or of the configured ones (PII redaction of web text would make new
    documents differ from the published ones)."""
    if parent.config_sha256 == config_sha:
        return True
    if not isinstance(parent.config.get("filters"), dict) or parent.config_sha256 != legacy_sha256(config):
        return False
    kinds = {s.content_kind for s in config.data.sources}
    kinds |= {SourceConfig.model_validate(s).content_kind for s in parent.config.get("sources") or []}
    applied = [f for f in config.data.filters if not f.dry_run and kinds & set(f.applies_to())]
    # Exactly the hashed length filter, on every kind of content and skipped by no source.
    length = config.data.length_filter()
    return (
        applied == [length]
        and kinds <= set(length.applies_to())
        and not any(length.label in s.skip_filters for s in config.data.sources)
    )


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
    if parent is not None and not same_processing(parent, config, config_sha):
        raise UserError(
            f"dataset {data.name!r} v{parent.version} was built with different processing settings "
            f"({', '.join(_COMPATIBILITY_FIELDS)}, max_doc_bytes, or the filter chain a kind of content gets); "
            "use a new dataset name to rebuild"
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
