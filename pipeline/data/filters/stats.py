"""The per-filter view of a build's stats, shared by the `sora preprocess` summary and the report.

A filter's drops are reject reasons `<filter>/<reason>` (`BuildStats.rejected`); what it checked
and did besides dropping are counters `<filter>/<counter>` (`BuildStats.filters`). One row per
filter of the chain, in chain order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FilterRow:
    name: str
    checked: int = 0
    dropped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.checked if self.checked else 0.0

    def reasons_text(self, top: int = 4) -> str:
        ranked = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{reason} {count:,}" for reason, count in ranked[:top])
        return text + (f", +{len(ranked) - top} more" if len(ranked) > top else "") or "-"

    def counters_text(self, top: int = 6) -> str:
        ranked = sorted(self.counters.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{name} {count:,}" for name, count in ranked[:top])
        return text + (f", +{len(ranked) - top} more" if len(ranked) > top else "") or "-"


def filter_rows(rejected: dict[str, int], counters: dict[str, int], names: list[str]) -> list[FilterRow]:
    """Rows of the filters named in `names` (chain order), plus any other filter found in the stats
    (a parent's chain)."""
    rows: dict[str, FilterRow] = {name: FilterRow(name) for name in names}
    for key, count in rejected.items():
        name, sep, reason = key.partition("/")
        if sep:
            row = rows.setdefault(name, FilterRow(name))
            row.reasons[reason] = row.reasons.get(reason, 0) + int(count)
            row.dropped += int(count)
    for key, count in counters.items():
        name, _, counter = key.partition("/")
        row = rows.setdefault(name, FilterRow(name))
        if counter == "checked":
            row.checked += int(count)
        else:
            row.counters[counter] = row.counters.get(counter, 0) + int(count)
    return list(rows.values())


def chain_names(config: dict | None) -> list[str]:
    """Filter names of a stored data config (`manifest.config`), in chain order."""
    filters = (config or {}).get("filters")
    if not isinstance(filters, list):
        return []
    return [f.get("name") or f.get("type") for f in filters if isinstance(f, dict)]
