"""Progress messages, task progress bars and the end-of-run summary of the data stage (rich console,
stderr)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from .filters.stats import chain_names, filter_rows

if TYPE_CHECKING:
    from ..records import Manifest


class Reporter:
    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, quiet=quiet)
        self.started = time.perf_counter()
        self.last = self.started

    def say(self, message: str) -> None:
        self.console.print(message)

    def start(self, message: str) -> None:
        self.started = self.last = time.perf_counter()
        self.console.print(f"[bold]{message}[/bold]")

    def tracker(self, what: str):
        """A `track(done, total)` callback for `blocks.run`: a transient bar while its tasks run
        (nothing when quiet)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        shown: dict = {}

        def track(done: int, total: int) -> None:
            if self.console.quiet:
                return
            if not shown:
                columns = (TextColumn(f"  {what}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
                shown["bar"] = Progress(*columns, console=self.console, transient=True)
                shown["bar"].start()
                shown["task"] = shown["bar"].add_task(what, total=total)
            shown["bar"].update(shown["task"], completed=done)
            if done >= total:
                shown["bar"].stop()

        return track

    def phase(self, name: str) -> None:
        now = time.perf_counter()
        self.console.print(f"  {name}: {now - self.last:.1f}s")
        self.last = now

    def finish(self, manifest: Manifest) -> None:
        elapsed = time.perf_counter() - self.started
        stats = manifest.stats.run
        tokens = sum(stats.tokens.values())
        table = Table(title=f"dataset {manifest.dataset} v{manifest.version} published", show_header=False)
        table.add_row("documents read", f"{stats.docs_read:,}")
        table.add_row("documents kept", f"{stats.docs_kept:,}")
        for reason, count in stats.rejected.items():
            table.add_row(f"  rejected: {reason}", f"{count:,}")
        table.add_row("  duplicates: exact / near", f"{stats.duplicates['exact']:,} / {stats.duplicates['near']:,}")
        table.add_row("tokens train / val / heldout", " / ".join(f"{n:,}" for n in stats.tokens.values()))
        shards = {s: len(v) for s, v in manifest.shards.items()}
        table.add_row("shards (all versions)", ", ".join(f"{s} {n}" for s, n in shards.items()))
        table.add_row("wall time", f"{elapsed:.1f}s")
        table.add_row("throughput", f"{stats.source_bytes / 1e6 / elapsed:.2f} MB/s, {tokens / elapsed:,.0f} tokens/s")
        self.console.print(table)
        rows = filter_rows(stats.rejected, stats.filters, chain_names(manifest.config))
        if rows:
            self.console.print(filters_table(rows))


def filters_table(rows) -> Table:
    """Per filter of the chain: documents checked, dropped (share), top reasons, other counters."""
    table = Table(title="filters")
    for column in ("filter", "checked", "dropped", "reasons", "counters"):
        table.add_column(column, justify="right" if column in ("checked", "dropped") else "left")
    for row in rows:
        dropped = f"{row.dropped:,} ({row.drop_rate:.1%})" if row.checked else f"{row.dropped:,}"
        table.add_row(row.name, f"{row.checked:,}", dropped, row.reasons_text(), row.counters_text())
    return table
