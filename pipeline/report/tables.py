"""Markdown tables of the run report: data stats, the eval table, lineage, wall time per stage."""

from __future__ import annotations

import re

from ..config.finetune import FinetuneConfig
from ..data.filters.stats import chain_names, filter_rows
from ..evaluation.table import eval_table
from ..keys import RunKeys
from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from .comparisons import Comparison, comparison_rows, comparisons
from .timings import read_timings

# A cell that reads as a number: "1,790", "37.7 ± 2.0", "-12.9 pts", "29 (1.6%)", or "-" for none.
_NUMBER = re.compile(r"[-+]?\d[\d.,]*(\s.*)?|-")


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; a column whose cells all read as numbers is right-aligned (`---:`)."""
    numeric = [
        any(row[i] != "-" for row in rows) and all(_NUMBER.fullmatch(row[i]) for row in rows)
        for i in range(len(header))
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def data_table(manifest: DatasetVersion) -> str:
    tokenizer = manifest.tokenizer
    rows = [
        ["dataset", f"{manifest.dataset} v{manifest.version}" + _parent(manifest)],
        ["tokenizer", f"vocab {tokenizer.vocab_size}, sha256 {tokenizer.sha256[:12]}"],
        ["sequence length", str(manifest.seq_len)],
    ]
    if manifest.stats:
        stats = manifest.stats.run
        rows += [
            ["documents read / kept", f"{stats.docs_read:,} / {stats.docs_kept:,}"],
            ["duplicates exact / near", f"{stats.duplicates['exact']:,} / {stats.duplicates['near']:,}"],
            ["rejected", ", ".join(f"{k} {v:,}" for k, v in stats.rejected.items()) or "none"],
            ["tokens " + " / ".join(stats.tokens), " / ".join(f"{v:,}" for v in stats.tokens.values())],
            ["source bytes", f"{stats.source_bytes:,}"],
        ]
    return _table(["", ""], rows)


def _parent(manifest: DatasetVersion) -> str:
    return f" (parent v{manifest.parent_version})" if manifest.parent_version is not None else ""


def filters_markdown(manifest: DatasetVersion) -> str:
    """Per filter of the data stage's chain (this version's build): checked, dropped, reasons, counters."""
    if not manifest.stats:
        return ""
    stats = manifest.stats.run
    rows = filter_rows(stats.rejected, stats.filters, chain_names(manifest.config))
    if not rows:
        return ""
    body = [
        [
            row.name,
            f"{row.checked:,}",
            f"{row.dropped:,} ({row.drop_rate:.1%})" if row.checked else f"{row.dropped:,}",
            row.reasons_text(),
            row.counters_text(),
        ]
        for row in rows
    ]
    return _table(["filter", "checked", "dropped", "reasons", "counters"], body)


Section = tuple[Comparison, list[str], list[list[str]]]


def eval_sections(store: ObjectStore, run: str, finetune: FinetuneConfig) -> list[Section]:
    """(comparison, header, body) of every comparison with rows (pipeline/report/comparisons.py)."""
    rows = eval_table(store, run)
    names = {name for row in rows for name in row["scores"]}
    sections = []
    for comparison in comparisons(finetune, names):
        header, body = comparison_rows(comparison, rows)
        if body:
            sections.append((comparison, header, body))
    return sections


def eval_markdown(store: ObjectStore, run: str, finetune: FinetuneConfig) -> str:
    """The eval tables: per task, the metrics a reader can use (pipeline/report/metrics.py), each
    checkpoint's score with stderr, the gain with its stderr, and chance or trivial baselines."""
    sections = eval_sections(store, run, finetune)
    if not sections:
        return "_not run yet_\n"
    parts = []
    for comparison, header, body in sections:
        title = f"### {comparison.title}\n\n" if comparison.title else ""
        parts.append(title + _table(header, body) + f"\n{comparison.note}\n")
    parts.append(
        "Accuracies and other 0-1 scores in %, ± one standard error (lm-eval; for a gain, of the "
        "difference); ↑ higher is better, ↓ lower. Chance: uniform / majority guess for the choice "
        "tasks, trivial answers scored like a model for the generative ones. Every metric lm-eval "
        "reported (perplexities too) is in each evaluation's `results.json`.\n"
    )
    return "\n".join(parts)


def eval_rows_for_console(store: ObjectStore, run: str, finetune: FinetuneConfig) -> list[list[str]]:
    """The main comparison as lists of strings, header first (for the end of `sora run`)."""
    sections = eval_sections(store, run, finetune)
    return [sections[0][1], *sections[0][2]] if sections else []


def lineage_table(store: ObjectStore, run: str, derived: dict[str, str], manifest: DatasetVersion | None) -> str:
    """The dataset, the pretrain run's export and every export derived from it ({label: run})."""
    rows = []
    if manifest:
        rows.append(["dataset", f"{manifest.dataset} v{manifest.version}", manifest.tokenizer.sha256[:16]])
    for label, name in [("pretrain", run), *derived.items()]:
        info = ExportInfo.load(store, name)
        if info is None:
            continue
        detail = f"step {info.step}, dataset v{info.dataset_version}"
        if info.init_from:
            detail += f", initialized from {info.init_from}"
        rows.append([label, store.uri(RunKeys(name).export), detail])
    return _table(["what", "where", "details"], rows) if rows else "_nothing exported yet_\n"


def timing_table(store: ObjectStore, run: str) -> str:
    timings = read_timings(store, run)
    if not timings:
        return "_no stage timings recorded (stages run one by one record theirs too)_\n"
    rows = [[stage, f"{t.wall_s:.1f}"] for stage, t in timings.items()]
    rows.append(["total", f"{sum(t.wall_s for t in timings.values()):.1f}"])
    return _table(["stage", "wall time (s)"], rows)
