"""Bad input (DESIGN.md s.6): per-file error-rate check and the rejects file.

Every record that is not kept (malformed, invalid UTF-8, empty, oversized, filtered) is written
with its reason and original bytes to `<dataset>/rejects/<run-id>/rejects.arrow`, so nothing is
lost silently, and counted in the manifest stats.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from ..errors import UserError
from .readers import MALFORMED_REASONS
from .shards import to_ipc_bytes


def check_error_rates(records: pd.DataFrame, max_error_rate: float, single_doc_sources: set[int]) -> None:
    """Fail, naming the file(s), when malformed records exceed `max_error_rate`.

    The rate is per file for files of many records (jsonl, parquet), and per source for sources
    whose files are single documents (text, python-stdlib), where one bad file is one bad record.
    """
    if records.empty:
        return
    malformed = records["reject"].isin(MALFORMED_REASONS)
    single = records["source_index"].isin(single_doc_sources)
    scope = records["unit"].where(~single, "source #" + records["source_index"].astype(str))
    frame = pd.DataFrame({"scope": scope, "unit": records["unit"], "reject": records["reject"], "bad": malformed})
    per_scope = frame.groupby("scope")["bad"].agg(["sum", "count"])
    per_scope["rate"] = per_scope["sum"] / per_scope["count"]
    failing = per_scope[per_scope["rate"] > max_error_rate].sort_values("rate", ascending=False)
    if failing.empty:
        return
    scope_name, row = failing.index[0], failing.iloc[0]
    bad = frame[(frame["scope"] == scope_name) & frame["bad"]]
    reasons = bad["reject"].value_counts().to_dict()
    files = sorted(set(bad["unit"]))
    where = files[0] if len(files) == 1 else f"{scope_name} ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
    more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
    raise UserError(
        f"{where}: {int(row['sum'])} of {int(row['count'])} records malformed ({row['rate']:.1%} > "
        f"max_error_rate {max_error_rate:.1%}; {reasons}){more}. Nothing was published."
    )


def rejects_table(rejects: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "doc_key": pa.array(rejects["doc_key"].tolist(), pa.string()),
            "unit": pa.array(rejects["unit"].tolist(), pa.string()),
            "reason": pa.array(rejects["reject"].tolist(), pa.string()),
            "raw": pa.array([r if isinstance(r, bytes) else None for r in rejects["raw"]], pa.binary()),
            "text": pa.array([t if isinstance(t, str) else None for t in rejects["text"]], pa.string()),
        }
    )


def rejects_bytes(rejects: pd.DataFrame) -> bytes:
    return to_ipc_bytes(rejects_table(rejects.sort_values("doc_key")))
