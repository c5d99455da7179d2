"""Bad input (DESIGN.md s.6): per-file error-rate check and the rejects files.

Every record that is not kept (malformed, invalid UTF-8, empty, oversized, filtered, exact or near
duplicate) is written with its reason and original bytes under `<dataset>/rejects/<run-id>/`, one
Arrow file per record block (`part-<content hash>.arrow`, rows sorted by doc_key), so nothing is
lost silently and no task or request ever holds every reject; they are counted in the manifest
stats. A duplicate's record names the kept document of its duplicate cluster (`match_doc_key`)
and the estimated Jaccard similarity (`dedup_stage._decide`). A document that shares an n-gram
with an evaluation set (`decontaminate.py`) names the matched task (`match_task`): removed with
reason `<filter>/<task>`, or, when the filter only flags, listed with reason `<filter>/flagged`
and `kept` true: it is in the training data too. Every other row has `kept` false.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UserError
from .filters.chain import EXTRA_COLUMNS
from .shards import to_ipc_bytes

if TYPE_CHECKING:
    from .plan import UnitCounts
    from .sources import SourceUnit

REJECTS_SCHEMA = pa.schema(
    [
        ("doc_key", pa.string()),
        ("unit", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.binary()),
        ("text", pa.string()),
        ("match_doc_key", pa.string()),
        ("jaccard", pa.float32()),
        ("match_task", pa.string()),
        ("kept", pa.bool_()),
        ("language", pa.string()),  # the language filter's label, when it saw the document
        ("language_score", pa.float32()),
    ]
)
DUPLICATE_REASONS = {"exact": "exact_duplicate", "near": "near_duplicate"}


def check_error_rates(
    per_unit: dict[int, UnitCounts], units: list[SourceUnit], max_error_rate: float, single_doc_sources: set[int]
) -> None:
    """Fail, naming the file(s), when malformed records exceed `max_error_rate`.

    The rate is per file for files of many records (jsonl, parquet), and per source for sources
    whose files are single documents (text, python-stdlib), where one bad file is one bad record.
    Works on per-file counts (one entry per file), not on per-document rows.
    """
    scopes: dict[str, dict] = {}
    for index, counts in per_unit.items():
        unit = units[index]
        single = unit.source_index in single_doc_sources
        name = f"source #{unit.source_index}" if single else unit.uri
        scope = scopes.setdefault(name, _Scope())
        scope.bad += counts.malformed
        scope.count += counts.records
        if counts.malformed:
            scope.files.add(unit.uri)
            for reason, n in counts.reasons.items():
                if reason in _malformed():
                    scope.reasons[reason] = scope.reasons.get(reason, 0) + n
    failing = sorted(
        ((s.bad / s.count, name) for name, s in scopes.items() if s.count and s.bad / s.count > max_error_rate),
        key=lambda pair: (-pair[0], pair[1]),
    )
    if not failing:
        return
    rate, name = failing[0]
    scope = scopes[name]
    reasons = dict(sorted(scope.reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    files = sorted(scope.files)
    where = files[0] if len(files) == 1 else f"{name} ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
    more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
    raise UserError(
        f"{where}: {scope.bad} of {scope.count} records malformed ({rate:.1%} > "
        f"max_error_rate {max_error_rate:.1%}; {reasons}){more}. Nothing was published."
    )


@dataclass
class _Scope:
    """Error-rate scope: one file, or one source of single-document files."""

    bad: int = 0
    count: int = 0
    files: set[str] = field(default_factory=set)
    reasons: dict[str, int] = field(default_factory=dict)


def _malformed():
    from .readers import MALFORMED_REASONS

    return MALFORMED_REASONS


def reject_rows(batch: pa.Table, removed: pa.Table, uris: pa.Array) -> pa.Table:
    """The records of a block that are not kept, and those decontamination flagged, as rejects rows."""
    dup_index = pc.index_in(batch["order"], value_set=removed["order"])
    keep = pc.or_(pc.is_valid(batch["reject"]), pc.is_valid(dup_index))
    batch, dup_index = batch.filter(keep), dup_index.filter(keep)
    dup_reason = pc.take(removed["reason"], dup_index)
    reason = pc.coalesce(batch["reject"], pc.replace_substring_regex(dup_reason, "^(exact|near)$", r"\1_duplicate"))
    # Decontamination's columns, when it marked documents of this block (`decontaminate.MARKED_SCHEMA`).
    marked = "match_task" in removed.column_names
    n = batch.num_rows
    return pa.table(
        {
            "doc_key": batch["doc_key"],
            "unit": pc.take(uris, batch["unit_index"]),
            "reason": reason,
            "raw": batch["raw"],
            "text": batch["text"],
            "match_doc_key": pc.take(removed["match_doc_key"], dup_index),
            "jaccard": pc.take(removed["jaccard"], dup_index),
            "match_task": pc.take(removed["match_task"], dup_index) if marked else pa.nulls(n, pa.string()),
            "kept": pc.fill_null(pc.take(removed["kept"], dup_index), False) if marked else pa.array(np.zeros(n, bool)),
            **{name: _column(batch, name, kind) for name, kind in EXTRA_COLUMNS.items()},
        },
        schema=REJECTS_SCHEMA,
    )


def _column(batch: pa.Table, name: str, kind: pa.DataType):
    return batch[name] if name in batch.column_names else pa.nulls(batch.num_rows, kind)


def _write_block(batch: pa.Table, removed: pa.Table, uris: pa.Array, root: str, settings, prefix: str) -> int:
    """One record block's rejects, sorted by doc_key, as one file (none when it has no rejects);
    returns the number of rows. A block's rejects are at most its records (multipart on S3 above
    the part size: `S3Store.write`)."""
    from .readers import _store

    table = reject_rows(batch, removed, uris)
    if not table.num_rows:
        return 0
    table = table.take(pc.sort_indices(table["doc_key"]))
    body = to_ipc_bytes(table)
    # Named by content: a retried task rewrites the same key; two blocks never hold the same rejects.
    _store(root, settings).write(f"{prefix}/part-{hashlib.sha256(body).hexdigest()[:16]}.arrow", body)
    return table.num_rows


def write_rejects(records, removed, units: list[SourceUnit], store, prefix: str, settings=None) -> int:
    """Write the rejects, one file per record block under `prefix`, by tasks; returns the number
    of rows. `records` and `removed` (per block, its removed documents: `dedup_stage.deduplicate`)
    are `blocks.Blocks`."""
    uris = pa.array([u.uri for u in units], pa.string())
    return sum(records.collect(_write_block, uris, store.root_uri, settings, prefix, each=removed))


def read_rejects(store, prefix: str) -> pa.Table:
    """Every rejects file under `prefix` (a run's `<dataset>/rejects/<run-id>`), as one table
    sorted by doc_key: for inspection and tests (it holds them all; a job over a large corpus's
    rejects reads the part files one by one)."""
    keys = [k for k in store.list(prefix) if k.endswith(".arrow")]
    tables = [pa.ipc.open_file(pa.py_buffer(store.read(k))).read_all() for k in keys]
    # Files of runs before decontamination lack its columns: read as null (and not kept).
    table = pa.concat_tables([REJECTS_SCHEMA.empty_table(), *tables], promote_options="default")
    table = table.set_column(table.schema.get_field_index("kept"), "kept", pc.fill_null(table["kept"], False))
    return table.take(pc.sort_indices(table["doc_key"]))
