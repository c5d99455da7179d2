"""The phases of one data-stage build, in order: read, dedup, decontaminate, cut, tokenizer,
tokenize + pack, publish.

Each phase is one function `phase(state) -> None` over the build's `BuildState`: it reads what
earlier phases left there and adds its own outputs (datatrove's one-step contract; the work itself
stays Ray tasks over Arrow blocks, `blocks.py`). Work a phase starts but does not wait for is
collected later, so the overlaps stay: the LSH band layout is computed while the workers read, and
the rejects and this run's dedup index are written while the driver trains the tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from ..errors import UserError
from ..faults import fail_point
from ..records import BuildStats, Manifest, ManifestStats, ShardEntry, next_version, published_chain, write_source_index
from ..records import publish as publish_manifest
from ..records.dataset import SCHEMA_VERSION
from .build_state import BuildState
from .decontaminate import decontaminate, eval_tasks_of
from .dedup import bands
from .dedup_stage import deduplicate, kept_records, write_index
from .filters.chain import chain_for
from .minhash import SCHEME
from .quarantine import check_error_rates, write_rejects
from .read_stage import read_records, split_bytes_and_sample
from .tokenize_pack import SPLITS, PackWriteGroup, tokenize_partitions, write_groups
from .tokenizer_step import load_stored_tokenizer, store_tokenizer, train_tokenizer

Phase = Callable[[BuildState], None]

_SHARD_FIELDS = ("uri", "key", "rows", "tokens", "bytes", "sha256", "docs")


def read(state: BuildState) -> None:
    """Read + clean + fingerprint this run's units; fail on a file over `max_error_rate`."""
    data = state.data
    # Decontamination's task files are checked first: a missing one fails before anything is read.
    state.eval_tasks = eval_tasks_of(data, state.settings)
    # So is the filter chain: a filter that cannot be built here (spaCy or the language model
    # missing) is one clear error, not the same failure in every read task.
    chain_for(data)
    # The LSH band layout costs the driver ~0.4 s (scipy): computed while the workers read.
    executor = ThreadPoolExecutor(1, thread_name_prefix="lsh-layout")
    state.layout = executor.submit(bands, data.dedup.threshold, data.dedup.num_perm)
    executor.shutdown(wait=False)  # the thread ends with its one job
    blocks = data.read_blocks or 3 * state.cpus
    state.records, state.read_stats = read_records(
        state.new_units, data, state.settings, blocks, state.scratch, state.reporter.tracker("read + clean")
    )
    state.reporter.phase("read + clean")
    single_doc = {i for i, s in enumerate(data.sources) if s.kind in ("text", "python-stdlib")}
    check_error_rates(state.read_stats.units, state.new_units, data.max_error_rate, single_doc)


def dedup(state: BuildState) -> None:
    """Global dedup (against the published versions too): per record block, its removed documents."""
    data, records = state.data, state.records
    state.removed, state.dedup_stats = deduplicate(
        records,
        state.new_units,
        state.scratch,
        state.parent,
        data.dedup,
        state.cpus,
        state.layout,
        state.read_stats.live,
        int(data.shuffle_partition_bytes),
    )
    state.reporter.phase("dedup")


def cut(state: BuildState) -> None:
    """The kept records (not rejected, duplicate or decontaminated) cut for tokenizing; fail when
    a first build keeps nothing."""
    data, records = state.data, state.records
    # Tokenizing is the longest step: kept blocks are cut (by text bytes) into about 4 per core so
    # that the last tasks finish together.
    pieces = max(1, -(-4 * state.cpus // len(records)))
    state.kept = records.cut(_kept_rows, "kept", pieces, pieces, each=state.removed)
    if not state.docs_kept and state.parent is None:
        write_rejects(records, state.removed, state.new_units, state.store, state.rejects_prefix, state.settings)
        raise UserError(
            f"dataset {data.name!r}: no documents survived filtering, dedup and decontamination; nothing to publish "
            f"(every record is under {state.store.uri(state.rejects_prefix)})"
        )


def tokenizer(state: BuildState) -> None:
    """The parent's tokenizer, the given one, or one trained on a sample of the kept documents;
    the rejects and the dedup index are written by tasks meanwhile."""
    data, parent = state.data, state.parent
    want_sample = parent is None and state.given is None
    state.split_bytes, sample = split_bytes_and_sample(state.kept, state.read_stats.live_bytes, data, want_sample)
    # Rejects and the dedup index are written by tasks while the driver trains the tokenizer: a
    # thread submits them (`blocks.run` waits on its window of tasks).
    index_prefix = f"{state.prefix}/dedup/{state.run_id}"
    writers = ThreadPoolExecutor(1, thread_name_prefix="rejects-index")
    state.writers = writers.submit(
        lambda: (
            write_rejects(
                state.records, state.removed, state.new_units, state.store, state.rejects_prefix, state.settings
            ),
            write_index(state.records, state.removed, state.store, state.settings, index_prefix, data.dedup),
        )
    )
    writers.shutdown(wait=False)  # the thread ends with its one job
    if parent is not None:
        state.tokenizer = load_stored_tokenizer(state.store, parent.tokenizer)
        state.tokenizer_info = parent.tokenizer
    else:
        state.tokenizer, eos_id, pad_id = train_tokenizer(data, sample) if want_sample else state.given
        state.tokenizer_info = store_tokenizer(state.store, state.prefix, state.tokenizer, eos_id, pad_id)
    state.reporter.phase("tokenizer")


def tokenize_pack(state: BuildState) -> None:
    """Tokenize + split (shuffle by shard group), pack and write the shards; wait for the rejects
    and the dedup index."""
    data, info = state.data, state.tokenizer_info
    groups = _group_counts(state.split_bytes, data, info.vocab_size)
    rows = []
    if state.docs_kept:
        shard_prefix = f"{state.prefix}/shards/{state.run_id}"
        writer = PackWriteGroup(
            data, state.settings, state.store.root_uri, shard_prefix, info.vocab_size, info.eos_id, info.pad_id
        )
        # One partition per shard group at most, at least one per core up to 4, and enough that a
        # partition holds about `shuffle_partition_bytes` of tokenized rows (token ids as uint32 are
        # about 1.3 x the text; a reduce task holds its partition).
        by_size = -(-2 * sum(state.split_bytes.values()) // int(data.shuffle_partition_bytes))
        parts = max(1, min(sum(groups.values()), max(4 * state.cpus, by_size)))
        exchange = state.scratch("tokens", parts)
        track = state.reporter.tracker("tokenize")
        tokenized = state.kept.shuffle(
            tokenize_partitions, exchange, data, state.tokenizer.to_str(), groups, parts, track=track
        )
        shards = pa.concat_tables(tokenized.reduce(write_groups, writer))
        rows = sorted(shards.to_pylist(), key=lambda e: e["key"])
    _, state.index_keys = state.writers.result()
    state.reporter.phase("tokenize + pack + write")
    state.shards = {split: [] for split in SPLITS}
    for row in rows:
        state.shards[row.pop("split")].append(ShardEntry(**{k: row[k] for k in _SHARD_FIELDS}))


def publish(state: BuildState) -> None:
    """The new version's source index, then its manifest (each create-if-absent), made LATEST
    (compare-and-swap)."""
    version = next_version(state.store, state.data.name)
    source_index = write_source_index(state.store, state.data.name, version, state.run_id, state.units)
    state.manifest = _manifest(state, version, source_index)
    fail_point("after_shards")
    publish_manifest(state.store, state.manifest, state.parent_etag, state.lease)
    state.reporter.finish(state.manifest)


PHASES: tuple[Phase, ...] = (read, dedup, decontaminate, cut, tokenizer, tokenize_pack, publish)


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


def _run_stats(state: BuildState) -> BuildStats:
    counts, shards = state.read_stats, state.shards
    return BuildStats(
        docs_read=counts.docs_read,
        docs_kept=int(state.docs_kept),
        rejected={k: int(v) for k, v in sorted(counts.rejected.items())},
        duplicates=state.dedup_stats.by_reason(),
        tokens={s: int(sum(e.tokens for e in shards[s])) for s in SPLITS},
        blocks={s: int(sum(e.rows for e in shards[s])) for s in ("train", "val")},
        source_bytes=counts.source_bytes(state.new_units),
        filters=dict(counts.filter_counts),
    )


def _manifest(state: BuildState, version: int, source_index: str) -> Manifest:
    """The new version's manifest; its source files are in the index at `source_index`, not in it."""
    data, parent, info = state.data, state.parent, state.tokenizer_info
    run = _run_stats(state)
    before = parent.stats.total if parent is not None and parent.stats is not None else None
    total = before.plus(run) if before is not None else run.model_copy(deep=True)
    return Manifest(
        schema_version=SCHEMA_VERSION,
        version=version,
        parent_version=parent.version if parent is not None else None,
        created_at=datetime.now(timezone.utc).isoformat(),
        dataset=data.name,
        seq_len=data.seq_len,
        dtype="uint16" if info.vocab_size <= 65536 else "uint32",
        tokenizer=info,
        source_index=source_index,
        shards={split: list(parent.split(split) if parent else ()) + state.shards[split] for split in SPLITS},
        stats=ManifestStats(run=run, total=total),
        dedup_index=(parent.dedup_index if parent is not None else []) + state.index_keys,
        dedup_scheme=SCHEME,
        config_sha256=state.config_sha256,
        config=data.model_dump(mode="json"),
        run_id=state.run_id,
        runs=(parent.runs if parent is not None else []) + [state.run_id],
        published=published_chain(state.store, data.name, parent, version),
    )
