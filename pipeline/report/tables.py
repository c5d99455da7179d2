"""Markdown tables of the run report: data stats, the eval table, lineage, wall time per stage."""

from __future__ import annotations

import re

from ..config.finetune import FinetuneConfig
from ..data.filters.stats import chain_names, filter_rows
from ..evaluation.table import eval_table
from ..keys import RunKeys
from ..records import DatasetVersion, ExportInfo
from ..storage import ObjectStore
from .metrics import MetricView, direction, shown, view
from .timings import read_timings


def _columns(finetune: FinetuneConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Evaluated names that fill the "pretrained" and "scratch" columns: the language models for
    the LM suites, the fine-tuned classifiers for classify (names: pipeline/evaluation/checkpoints.py)."""
    return ("pretrained", finetune.eval_name("pretrained")), ("scratch", finetune.eval_name("scratch"))


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


def _score(cell: dict | None, shown_as: MetricView) -> str:
    if not cell:
        return "-"
    text = shown_as.number(cell["value"])
    if cell.get("stderr") is not None:
        text += f" ± {shown_as.number(cell['stderr'])}"
    return text


def _percent(value: float | None) -> str:
    return f"{value * 100:.1f}" if value is not None else "-"


def eval_markdown(store: ObjectStore, run: str, finetune: FinetuneConfig) -> str:
    """The eval table: per task, the metrics a reader can use (pipeline/report/metrics.py), each
    for the pretrained and scratch columns with stderr, their gain, and chance where it is known."""
    rows = eval_table(store, run)
    if not rows:
        return "_not run yet_\n"
    reported: dict[str, set[str]] = {}
    for row in rows:
        reported.setdefault(row["task"], set()).add(row["metric"])
    body = []
    pretrained_names, scratch_names = _columns(finetune)
    for row in rows:
        if not shown(row["metric"], reported[row["task"]]):
            continue
        shown_as = view(row["metric"])
        pretrained = next((row["scores"][n] for n in pretrained_names if n in row["scores"]), None)
        scratch = next((row["scores"][n] for n in scratch_names if n in row["scores"]), None)
        chance = row.get("chance") or {}
        gain = shown_as.gain(pretrained["value"] - scratch["value"]) if pretrained and scratch else "-"
        body.append(
            [
                row["task"],
                row["metric"] + direction(row.get("higher_is_better")),
                _score(pretrained, shown_as),
                _score(scratch, shown_as),
                gain,
                _percent(chance.get("uniform")),
                _percent(chance.get("majority")),
            ]
        )
    note = (
        "\nAccuracies and other 0-1 scores in %, ± one standard error (lm-eval); ↑ higher is better, "
        "↓ lower; gain = pretrained − scratch. For `sora_classify` the columns are the "
        "classifiers fine-tuned from the pretrained model and from random initialization with the same "
        "budget; for the other suites, the pretrained language model and a randomly initialized one. "
        "Every metric lm-eval reported (perplexities too) is in each evaluation's `results.json`.\n"
    )
    header = ["task", "metric", "pretrained", "scratch", "gain", "chance (uniform)", "chance (majority)"]
    return _table(header, body) + note


def eval_rows_for_console(store: ObjectStore, run: str, finetune: FinetuneConfig) -> list[list[str]]:
    """The same table as lists of strings (for the end of `sora run`)."""
    text = eval_markdown(store, run, finetune)
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.startswith("|---")
    ]


def lineage_table(store: ObjectStore, run: str, finetune_runs: dict[str, str], manifest: DatasetVersion | None) -> str:
    rows = []
    if manifest:
        rows.append(["dataset", f"{manifest.dataset} v{manifest.version}", manifest.tokenizer.sha256[:16]])
    for label, name in [("pretrain", run), *((f"fine-tune from {i}", n) for i, n in finetune_runs.items())]:
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
