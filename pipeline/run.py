"""`sora run`: the main job, every stage in order on one config, each resuming where it stopped.

data (build or refresh) -> pretrain -> finetune (pretrained and scratch) -> [distill] -> [quantize]
-> evaluate -> report. Distillation and quantization run when their sections are enabled.
Every stage skips work that is already done (a finished run, an existing export, stored eval
results), so a second `sora run` on the same config redoes nothing and ends with the same report.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from .config.run import RunConfig
from .records import StoredConfig, read_dataset
from .storage import ObjectStore, open_store


def record_config(store: ObjectStore, config: RunConfig) -> None:
    """Store the run config next to the run (the report shows it; no secrets live in it)."""
    StoredConfig(config=config.model_dump(mode="json")).write(store, config.finetune.source_run(config.train))


def run_all(config: RunConfig, console: Console | None = None) -> dict:
    from .data.stage import preprocess
    from .evaluation.checkpoints import evaluate_run
    from .evaluation.workers import ensure_suites
    from .finetune.launch import finetune
    from .pretrain.launch import pretrain
    from .report.build import build_report
    from .report.timings import timed

    # Logs and CI capture stderr without a terminal: do not squeeze the table into 80 columns.
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    store = open_store(config.storage.root, config.storage.settings())
    store.check()
    run = config.train.run
    record_config(store, config)
    check_enabled_stages(config)
    with timed(store, run, "data"):
        manifest = preprocess(config)
        # The suites come from the version's held-out documents alone: built (in a Ray task) before any
        # training, so a suite the corpus cannot provide is refused now, not after pretraining.
        # (the version's view, not the whole manifest with its per-file source list, goes to the task)
        ensure_suites(config, store, read_dataset(store, manifest.dataset, manifest.version))
    with timed(store, run, "pretrain") as outcome:
        pretrained = pretrain(config)
        outcome["skipped"] = pretrained.get("skipped", False)
    with timed(store, run, "finetune") as outcome:
        tuned = finetune(config)
        outcome["skipped"] = all(r.get("skipped") for r in tuned.values())
    extras = {}
    if config.distill.enabled:  # a smaller student, with and without the teacher, on the same tokens
        from .distill.launch import distill

        with timed(store, run, "distill") as outcome:
            extras["distill"] = distill(config)
            outcome["skipped"] = all(r.get("skipped") for r in extras["distill"].values())
    if config.quantize.enabled:  # int8/int4 copies of the pretrained export, measured
        from .quantize.launch import quantize

        with timed(store, run, "quantize"):
            extras["quantize"] = {method: record.checkpoint_uri for method, record in quantize(config).items()}
    with timed(store, run, "evaluate"):
        evaluated = evaluate_run(config)
    report = build_report(store, run)  # not timed: the report shows the timings it was built from
    print_eval_table(store, config, console)
    console.print(f"report: {report['md']} ({report['html']})", soft_wrap=True)
    return {
        "dataset": manifest,
        "pretrain": pretrained,
        "finetune": tuned,
        **extras,
        "evaluate": evaluated,
        "report": report,
    }


def check_enabled_stages(config: RunConfig) -> None:
    """What the optional stages can be told before any training: a one-line UserError now instead
    of one after the pretraining they follow (the finetune task's suite is a config check)."""
    if config.distill.enabled:
        from .distill.launch import check_distill

        check_distill(config)
    if config.quantize.enabled:
        from .quantize.launch import check_quantize

        check_quantize(config)


def print_eval_table(store: ObjectStore, config: RunConfig, console: Console) -> None:
    """The report's eval tables (pipeline/report/comparisons.py), one rich table per comparison."""
    from .report.tables import eval_sections

    sections = eval_sections(store, config.finetune.source_run(config.train), config.finetune)
    if not sections:
        console.print("no evaluation results yet")
        return
    for comparison, header, body in sections:
        console.print(_console_table(comparison.title or "evaluation", header, body))
    console.print(
        "0-1 scores in %, ± one standard error (of the difference, for a gain), ↑/↓ the better direction; "
        "chance: uniform / majority guess, or trivial answers. Every metric is in each evaluation's results.json."
    )


def _console_table(title: str, header: list[str], body: list[list[str]]) -> Table:
    """Lines under the header only and scores as 37.7±2.0, gains without " pts", so a table fits an
    80-column terminal. Every column asks for its widest cell; on a narrower terminal a long task or
    metric name wraps, a number never does (nor parts from its ±)."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    cells = [[*row[:2], *(cell.replace(" ± ", "±").removesuffix(" pts") for cell in row[2:])] for row in body]
    for index, column in enumerate(header):
        widest = max([len(column), *(len(row[index]) for row in cells)])
        if index < 2 or index == len(header) - 1:  # names, and the chance text
            table.add_column(column, overflow="fold", min_width=min(widest, 24))
        else:
            table.add_column(column, no_wrap=True, justify="right", min_width=widest)
    for row in cells:
        table.add_row(*row)
    return table
