"""`sora run`: the main job, every stage in order on one config, each resuming where it stopped.

data (build or refresh) -> pretrain -> finetune (pretrained and scratch) -> evaluate -> report.
Every stage skips work that is already done (a finished run, an existing export, stored eval
results), so a second `sora run` on the same config redoes nothing and ends with the same report.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from .config.run import RunConfig
from .records import StoredConfig
from .storage import ObjectStore, open_store


def record_config(store: ObjectStore, config: RunConfig) -> None:
    """Store the run config next to the run (the report shows it; no secrets live in it)."""
    StoredConfig(config=config.model_dump(mode="json")).write(store, config.finetune.source_run(config.train))


def run_all(config: RunConfig, console: Console | None = None) -> dict:
    from .data.stage import preprocess
    from .evaluation.checkpoints import evaluate_run
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
    with timed(store, run, "data"):
        manifest = preprocess(config)
    with timed(store, run, "pretrain") as outcome:
        pretrained = pretrain(config)
        outcome["skipped"] = pretrained.get("skipped", False)
    with timed(store, run, "finetune") as outcome:
        tuned = finetune(config)
        outcome["skipped"] = all(r.get("skipped") for r in tuned.values())
    with timed(store, run, "evaluate"):
        evaluated = evaluate_run(config)
    report = build_report(store, run)  # not timed: the report shows the timings it was built from
    print_eval_table(store, config, console)
    console.print(f"report: {report['md']} ({report['html']})", soft_wrap=True)
    return {"dataset": manifest, "pretrain": pretrained, "finetune": tuned, "evaluate": evaluated, "report": report}


def print_eval_table(store: ObjectStore, config: RunConfig, console: Console) -> None:
    from .report.tables import eval_rows_for_console

    rows = eval_rows_for_console(store, config.finetune.source_run(config.train), config.finetune)
    if not rows:
        console.print("no evaluation results yet")
        return
    table = Table(title="evaluation (pretrained vs scratch vs chance)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
