"""Decontamination: documents sharing a word n-gram (`ngram` words, 13 by default) with an
evaluation set are removed from training (`action: drop`) or only listed (`action: flag`).

It is the `decontaminate` entry of `data.filters`, and unlike the other filters it runs after
dedup's decisions and before the kept records are cut for tokenizing (a phase of its own,
`phases.py`): what it checks against includes the held-out split, which is known only once the
kept documents are. Nothing runs when the chain has no such entry.

The index: 64-bit hashes of the word n-grams (`ngrams.py`: lower-cased `\\w+` words) of
- each configured task (`tasks`: lm-eval task YAMLs or data files, `eval_tasks.py`), named by its
  task; read and hashed by the driver (evaluation sets are megabytes);
- with `heldout`, the held-out documents, named `sora_heldout` (Sora's evaluation suites are built
  from them): this run's kept held-out documents and the held-out shards of the versions before
  it, hashed by tasks that store their distinct hashes, with the documents holding each, on
  scratch and return only the file's key.
A hash several tasks share is named by the first of them (configured order, then the held-out).

The index is bounded by `max_index_ngrams` (it is stored once in the object store and read by
every marking task). Beyond it, n-grams are kept by hash: those under a threshold, which keeps a
uniform sample of the wanted rate. The tasks' n-grams take the budget first (subsampled only if
they alone exceed it), the held-out ones the rest. The sample is the same wherever it is used: an
n-gram is indexed or not by its hash alone, so a document n-gram matches exactly when it is in the
sample, whichever block or run it is looked up from. Subsampling costs little recall: a document
that copies a passage of k words shares k - n + 1 n-grams, so with a rate r it is missed with
probability (1 - r)^(k - n + 1) (0.9^88 = 1e-4 for a 100-word passage at r = 0.1).

Marking: one task per record block looks up every n-gram of its kept (live, not duplicate)
documents of the sources the filter applies to (`content`, `skip_filters`), except held-out ones
(they are the held-out split: checking them against it would remove it). A document with a match
is named by the smallest task id of its matches. It joins the block's `removed` table
(`dedup_stage`; columns `MARKED_SCHEMA`), so that the cut for tokenizing, the dedup index and the
rejects file account for it: dropped with reason `<filter>/<task>`, or flagged with reason
`<filter>/flagged` and `kept` true (it stays in training and in the rejects file). Both name the
task in `match_task`.

Boilerplate: an n-gram that many held-out documents share (a licence header, a cookie banner) is
not a leaked passage of one evaluation document, and dropping every training document that holds
it would gut a code corpus. The held-out documents are a uniform sample, so what is common in
training is common among them too: each block and shard stores its held-out n-grams with the
number of its documents holding each, the sampled ones are summed across blocks in the driver, and
those held by more than `heldout_max_docs` (2) held-out documents leave the index (a passage leaked
from one evaluation document is held by that one, after dedup). The count is exact whatever the
block layout (a sum of per-block counts); the sample rate comes from a bottom-k sketch of the
held-out n-grams (`SKETCH` smallest hashes: the union's k smallest are the same whatever the
layout), and the sample is cut to the budget by hash, so the index, and each document's fate, do
not depend on the cluster's size. The driver holds keys and small results only: sketches and
counts are merged by tasks, `GROUP` stored tables at a time, and it reads the one merged sample
(at most the budget: 16 bytes a row). The configured tasks' n-grams are always enforced: a
benchmark question copied to many pages is contamination.

Counters (`BuildStats.filters`, `<filter>/<counter>`): `checked` (documents looked up),
`common_ngrams` (sampled held-out n-grams ignored as boilerplate),
`flagged` and `flagged/<task>`, `index_ngrams` (hashes indexed), `task_ngrams` (distinct n-grams
of the task files), `heldout_ngrams` and `heldout_sampled` (distinct held-out n-grams, estimated
by the sketch, and those under the sampling threshold: their ratio is the sampling rate). Drops are
rejects (`BuildStats.rejected`, `<filter>/<task>`), like every filter's.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config.filters import DecontaminateFilter
from ..records import SPLITS
from .blocks import Blocks, read_table, run, write_table
from .dedup_stage import REMOVED_SCHEMA, kept_records
from .eval_tasks import EvalTask, resolve_tasks, task_texts
from .ngrams import NgramIndex, below, distinct_ngrams, iter_ngrams, sample_threshold, sorted_distinct
from .shards import read_shard, to_ipc_bytes
from .tokenize_pack import split_codes

if TYPE_CHECKING:
    from ..config.data import DataConfig
    from ..records import ShardEntry
    from ..storage import StorageSettings
    from .build_state import BuildState

HELDOUT_TASK = "sora_heldout"
HELDOUT_CODE = SPLITS.index("heldout")
MARKED_SCHEMA = pa.schema([*REMOVED_SCHEMA, ("match_task", pa.string()), ("kept", pa.bool_())])
_HASHES = pa.schema([("hash", pa.uint64()), ("docs", pa.int64())])
SKETCH = 4096  # bottom-k sketch of the held-out n-grams: the distinct count within ~1.6%
GROUP = 64  # stored tables one sketch or merge task reads: the driver gets blocks / 64 results


def spec_of(data: DataConfig) -> DecontaminateFilter | None:
    """The chain's decontaminate entry (at most one), or None."""
    return next((f for f in data.filters if isinstance(f, DecontaminateFilter)), None)


def eval_tasks_of(data: DataConfig, settings: StorageSettings) -> list[EvalTask] | None:
    """The configured task files, resolved and checked (a `UserError` names a missing one): called
    before the build reads anything, so a typo fails fast. None without decontamination."""
    spec = spec_of(data)
    return resolve_tasks(spec.tasks, settings) if spec is not None else None


def decontaminate(state: BuildState) -> None:
    """The phase: index the evaluation n-grams, mark matching documents in `state.removed`, and
    count (`state.read_stats`). Nothing without a decontaminate filter."""
    spec = spec_of(state.data)
    if spec is None:
        return
    tasks = state.eval_tasks if state.eval_tasks is not None else eval_tasks_of(state.data, state.settings)
    counts: Counter = Counter()
    index = build_index(state, spec, tasks, counts)
    if len(index):
        state.removed = _mark(state, spec, index, counts)
    record_counts(state, spec.label, counts)
    state.reporter.phase("decontaminate")


# -- the index ---------------------------------------------------------------------------------


def build_index(state: BuildState, spec: DecontaminateFilter, tasks: list[EvalTask], counts: Counter) -> NgramIndex:
    """The index of the task files and (with `spec.heldout`) the held-out documents, within
    `spec.max_index_ngrams` (see the module docstring); its sizes added to `counts`."""
    n, limit = spec.ngram, spec.max_index_ngrams
    task_parts = [(i, _task_hashes(task, state.settings, state.data.normalize, n)) for i, task in enumerate(tasks)]
    counts["task_ngrams"] = sum(len(h) for _, h in task_parts)
    threshold = sample_threshold(counts["task_ngrams"], limit)
    parts = [(i, below(h, threshold)) for i, h in task_parts]
    names = tuple(task.name for task in tasks)
    if spec.heldout:
        keys = [key for key, _ in _heldout_stored(state, n)]
        budget = limit - sum(len(h) for _, h in parts)
        distinct = distinct_estimate(_sketches(state, keys))
        counts["heldout_ngrams"] = distinct
        threshold = sample_threshold(distinct, budget)
        hashes, docs = _sampled_frequencies(state, keys, threshold)
        # The estimate is within ~2% either way: a prefix of the sorted sample is a lower threshold,
        # so cutting it to the budget keeps it a layout-independent sample.
        hashes, docs = hashes[:budget], docs[:budget]
        counts["heldout_sampled"] = len(hashes)
        if spec.heldout_max_docs is not None:
            common = docs > spec.heldout_max_docs
            counts["common_ngrams"] = int(common.sum())
            hashes = hashes[~common]
        parts.append((len(names), hashes))
        names += (HELDOUT_TASK,)
    index = NgramIndex.build(parts, names, n)
    counts["index_ngrams"] = len(index)
    return index


def distinct_estimate(smallest: list[np.ndarray]) -> int:
    """The number of distinct held-out n-grams, from each block's `SKETCH` smallest distinct hashes
    (a bottom-k sketch): the union's k smallest are the same whatever the block layout, so the
    sample rate drawn from them is too. Exact when the union has fewer than k."""
    union = sorted_distinct(np.concatenate([np.zeros(0, np.uint64), *smallest]))
    if len(union) < SKETCH:
        return len(union)
    return int((SKETCH - 1) * 2.0**64 / (float(union[SKETCH - 1]) + 1.0))


def heldout_frequencies(sampled: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct hashes, held-out documents holding each) from the blocks' and shards' own
    (hashes, documents) under the sampling threshold: their per-block counts summed."""
    hashes = np.concatenate([np.zeros(0, np.uint64), *(h for h, _ in sampled)])
    docs = np.concatenate([np.zeros(0, np.int64), *(d for _, d in sampled)])
    if not len(hashes):
        return hashes, docs
    order = np.argsort(hashes, kind="stable")
    hashes, docs = hashes[order], docs[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    return hashes[starts], np.add.reduceat(docs, starts)


def _groups(keys: list[str]) -> list[tuple[list[str]]]:
    return [(keys[i : i + GROUP],) for i in range(0, len(keys), GROUP)]


def _sketches(state: BuildState, keys: list[str]) -> list[np.ndarray]:
    """The bottom-k sketch of each group of `GROUP` stored tables (tasks): the driver receives one
    per group, `SKETCH` hashes each, not one per block."""
    shared = (state.store.root_uri, state.settings)
    return run(_group_sketch, "heldout_sketch", _groups(keys), shared) if keys else []


def _group_sketch(keys: list[str], root: str, settings) -> np.ndarray:
    smallest = [read_table(root, settings, key)["hash"].to_numpy()[:SKETCH] for key in keys]
    return sorted_distinct(np.concatenate(smallest))[:SKETCH]


def _sampled_frequencies(state: BuildState, keys: list[str], threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """The sampled held-out n-grams with their document counts summed over every table: merged by
    tasks, `GROUP` tables at a time, into one table the driver reads (about the budget's size)."""
    root, settings = state.store.root_uri, state.settings
    prefix = f"{state.scratch.prefix}/decontaminate/merged"
    while len(keys) > 1:
        keys = run(_group_merge, "heldout_merge", _groups(keys), (threshold, root, settings, prefix))
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    table = read_table(root, settings, keys[0])
    hashes, docs = _stored_below(table, threshold)
    return hashes, docs


def _group_merge(keys: list[str], threshold: int, root: str, settings, prefix: str) -> str:
    """One merge task: the sampled rows of `keys`' tables, counts summed per hash, stored."""
    hashes, docs = heldout_frequencies([_stored_below(read_table(root, settings, key), threshold) for key in keys])
    table = pa.table({"hash": hashes, "docs": docs}, schema=_HASHES)
    digest = hashlib.sha256(hashes.tobytes() + docs.tobytes()).hexdigest()[:16]
    return write_table(root, settings, f"{prefix}/part-{digest}.arrow", table)


def _task_hashes(task: EvalTask, settings: StorageSettings, normalize: str, n: int) -> np.ndarray:
    """The distinct n-gram hashes of one task's texts (driver side: the task's files are small)."""
    parts = [distinct_ngrams(texts, n) for texts in task_texts(task, settings, normalize)]
    return sorted_distinct(np.concatenate(parts), runs=True) if parts else np.zeros(0, np.uint64)


def _heldout_stored(state: BuildState, n: int) -> list[tuple[str, int]]:
    """(key, distinct count) of the stored (hash, documents) tables, sorted by hash, of every record
    block's kept held-out documents and of every held-out shard of the earlier versions (blocks
    without held-out documents left out)."""
    root, settings = state.store.root_uri, state.settings
    prefix = f"{state.scratch.prefix}/decontaminate/heldout"
    results = state.records.collect(_block_heldout, state.data, n, root, settings, prefix, each=state.removed)
    if state.parent is not None:
        calls = [(entry,) for entry in state.parent.split("heldout")]
        results += run(_shard_heldout, "heldout_shard", calls, (n, root, settings, prefix))
    return [(key, count) for key, count in results if key is not None]


def heldout_texts(batch: pa.Table, removed: pa.Table, data: DataConfig) -> list[str]:
    """A record block's kept held-out documents' texts."""
    kept = kept_records(batch, removed)
    held = split_codes(kept["hash"].to_pylist(), data) == HELDOUT_CODE
    return kept["text"].filter(pa.array(held)).to_pylist()


def _block_heldout(
    batch: pa.Table, removed: pa.Table, data: DataConfig, n: int, root: str, settings, prefix: str
) -> tuple[str | None, int]:
    return _store_hashes(heldout_texts(batch, removed, data), n, root, settings, prefix)


def _shard_heldout(entry: ShardEntry, n: int, root: str, settings, prefix: str) -> tuple[str | None, int]:
    """An earlier version's held-out shard (`doc_key`, `label`, `text`), checked against its sha256."""
    from .readers import _store

    shard = read_shard(_store(root, settings), entry)
    return _store_hashes(shard["text"].to_pylist(), n, root, settings, prefix)


def document_frequencies(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct n-gram hashes of `texts`, the number of texts holding each)."""
    hashes = [np.zeros(0, np.uint64)]
    for group, doc in iter_ngrams(texts, n):
        # Distinct (text, hash) pairs: a text counts once per n-gram however often it repeats it.
        order = np.lexsort((group, doc))
        group, doc = group[order], doc[order]
        hashes.append(group[np.r_[True, (group[1:] != group[:-1]) | (doc[1:] != doc[:-1])]])
    every = np.sort(np.concatenate(hashes))
    if not len(every):
        return every, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, every[1:] != every[:-1]])
    return every[starts], np.diff(np.r_[starts, len(every)]).astype(np.int64)


def _store_hashes(texts: list[str], n: int, root: str, settings, prefix: str) -> tuple[str | None, int]:
    """The (hash, documents) table of `texts`, sorted by hash, stored as one file named by content
    (a retried task rewrites the same key); (key, distinct count), (None, 0) for none."""
    hashes, docs = document_frequencies(texts, n)
    if not len(hashes):
        return None, 0
    table = pa.table({"hash": hashes, "docs": docs}, schema=_HASHES)
    digest = hashlib.sha256(hashes.tobytes() + docs.tobytes()).hexdigest()[:16]
    return write_table(root, settings, f"{prefix}/part-{digest}.arrow", table), len(hashes)


def _stored_below(table: pa.Table, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    hashes = table["hash"].to_numpy()
    kept = below(hashes, threshold)
    return kept, table["docs"].to_numpy()[: len(kept)]


# -- marking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkPlan:
    """What a marking task needs besides its block and the index."""

    label: str  # the filter's name: reasons and counters
    flag: bool  # action: flag (keep and list) rather than drop
    sources: tuple[int, ...]  # source indices the filter applies to


def plan_of(spec: DecontaminateFilter, data: DataConfig) -> MarkPlan:
    return MarkPlan(spec.label, spec.action == "flag", tuple(sorted(spec.sources(data))))


def _mark(state: BuildState, spec: DecontaminateFilter, index: NgramIndex, counts: Counter) -> Blocks:
    """`state.removed` with every block's matching documents added (a block without a match keeps
    its table); the tasks' counts added to `counts`."""
    import ray

    plan = plan_of(spec, state.data)
    index_ref = ray.put(index)  # once: every task reads it from the object store in place
    root, settings = state.store.root_uri, state.settings
    prefix = f"{state.scratch.prefix}/decontaminate/removed"
    results = state.records.collect(
        _mark_block, index_ref, plan, state.data, root, settings, prefix, each=state.removed
    )
    for _, block_counts in results:
        counts.update(block_counts)
    keys = [new or old for (new, _), old in zip(results, state.removed.keys, strict=True)]
    return Blocks(keys, state.removed.scratch)


def _mark_block(
    batch: pa.Table,
    removed: pa.Table,
    index: NgramIndex,
    plan: MarkPlan,
    data: DataConfig,
    root: str,
    settings,
    prefix: str,
) -> tuple[str | None, Counter]:
    """One record block's marking task: (the key of its new removed table, None when nothing
    matched; its counts: `checked`, `dropped/<task>` or `flagged/<task>`)."""
    from .readers import _store

    table, counts = mark(batch, removed, index, plan, data)
    if table is None:
        return None, counts
    body = to_ipc_bytes(table.sort_by("order"))
    key = f"{prefix}/part-{hashlib.sha256(body).hexdigest()[:16]}.arrow"  # by content: a retry rewrites it
    _store(root, settings).write(key, body)
    return key, counts


def mark(
    batch: pa.Table, removed: pa.Table, index: NgramIndex, plan: MarkPlan, data: DataConfig
) -> tuple[pa.Table | None, Counter]:
    """(the block's removed table with its matching documents added, or None when none matched;
    counts). No Ray: the unit the tests drive."""
    docs = checked_docs(batch, removed, plan, data)
    counts = Counter({"checked": docs.num_rows})
    task = index.match(docs["text"].to_pylist()) if docs.num_rows else np.zeros(0, np.int32)
    hit = task >= 0
    if not hit.any():
        return None, counts
    names = pc.take(pa.array(index.names, pa.string()), pa.array(task[hit]))
    action = "flagged" if plan.flag else "dropped"
    counts.update(f"{action}/{name}" for name in names.to_pylist())
    marked = _marked_rows(docs.filter(pa.array(hit))["order"], names, plan)
    return pa.concat_tables([widen(removed), marked]), counts


def checked_docs(batch: pa.Table, removed: pa.Table, plan: MarkPlan, data: DataConfig) -> pa.Table:
    """The documents of a block that are looked up: kept so far, of a source the filter applies
    to, and not held out."""
    kept = kept_records(batch, removed)
    source = kept["source_index"].to_numpy()
    wanted = np.isin(source, np.array(plan.sources, np.int64))
    wanted &= split_codes(kept["hash"].to_pylist(), data) != HELDOUT_CODE
    return kept.filter(pa.array(wanted))


def _marked_rows(orders: pa.ChunkedArray, names: pa.Array, plan: MarkPlan) -> pa.Table:
    n = len(orders)
    reason = (
        pa.array([f"{plan.label}/flagged"] * n, pa.string())
        if plan.flag
        else pc.binary_join_element_wise(f"{plan.label}/", names, "")
    )
    columns = {
        "order": orders,
        "reason": reason,
        "match_order": pa.nulls(n, pa.int64()),
        "jaccard": pa.nulls(n, pa.float32()),
        "match_doc_key": pa.nulls(n, pa.string()),
        "match_task": names,
        "kept": pa.array(np.full(n, plan.flag)),
    }
    return pa.table(columns, schema=MARKED_SCHEMA)


def widen(removed: pa.Table) -> pa.Table:
    """A dedup `removed` table (`REMOVED_SCHEMA`) with the decontamination columns (null, false)."""
    if "match_task" in removed.column_names:
        return removed.cast(MARKED_SCHEMA)
    n = removed.num_rows
    removed = removed.append_column("match_task", pa.nulls(n, pa.string()))
    return removed.append_column("kept", pa.array(np.zeros(n, bool))).cast(MARKED_SCHEMA)


# -- counts ------------------------------------------------------------------------------------


def record_counts(state: BuildState, label: str, counts: Counter) -> None:
    """The counts into the run's read stats: drops are rejects (and no longer live, so that
    read = kept + rejected + duplicates still holds), the rest are the filter's counters."""
    stats = state.read_stats
    filters = Counter(stats.filter_counts)
    for key, count in counts.items():
        what, _, task = key.partition("/")
        if what == "dropped":
            reason = f"{label}/{task}"
            stats.rejected[reason] = stats.rejected.get(reason, 0) + int(count)
            stats.live -= int(count)
        else:
            filters[f"{label}/{key}"] += int(count)
            if what == "flagged":
                filters[f"{label}/flagged"] += int(count)
    stats.filter_counts = dict(sorted(filters.items()))


__all__ = [
    "HELDOUT_TASK",
    "MARKED_SCHEMA",
    "MarkPlan",
    "build_index",
    "checked_docs",
    "decontaminate",
    "eval_tasks_of",
    "heldout_texts",
    "mark",
    "plan_of",
    "record_counts",
    "spec_of",
    "widen",
]
