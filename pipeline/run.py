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
    from .finetune.launch import finetune
    from .pretrain.launch import pretrain
    from .report.build import build_report
    from .report.timings import timed
    from .suites.ensure import ensure_suites

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
    for index, (comparison, header, body) in enumerate(sections):
        # Only the first table shows chance: the others score the same tasks, and 80 columns hold no more.
        console.print(_console_table(comparison.title or "evaluation", header, body, with_chance=index == 0))
    console.print(
        "0-1 scores in %, ± one standard error (of the difference, for a gain), ↑/↓ the better direction; "
        "chance: uniform / majority guess, or the best trivial answer (named in the report). Every metric is "
        "in each evaluation's results.json."
    )


def _console_table(title: str, header: list[str], body: list[list[str]], with_chance: bool) -> Table:
    """Lines under the header only, scores as 37.7±2.0, gains without " pts", suite names without
    `sora_`, a generative suite's best trivial answer alone, so a table fits an 80-column terminal.
    A number never wraps (its cells set the column's width), a header may; on a narrower terminal
    a long task or metric name wraps."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    header = header if with_chance else header[:-1]  # the chance column is the last
    cells = []
    for row in body:
        scores = [cell.replace(" ± ", "±").removesuffix(" pts") for cell in row[2:-1]]
        cells.append(
            [row[0].removeprefix("sora_"), row[1], *scores, *([_best_baseline(row[-1])] if with_chance else [])]
        )
    for index, column in enumerate(header):
        widest = max(len(row[index]) for row in cells)
        if index < 2:  # task and metric names
            table.add_column(column, overflow="fold", min_width=min(max(widest, len(column)), 24))
        else:
            table.add_column(column, justify="right", min_width=widest, max_width=max(widest, 10))
    for row in cells:
        table.add_row(*row)
    return table


def _best_baseline(chance: str) -> str:
    """The chance cell for a terminal: "uniform / majority" as it is; a generative suite's trivial
    answers ("copy_last_line 4.6, most_frequent_line 0.6") as the best score alone."""
    scores = [part.rsplit(" ", 1)[-1] for part in chance.split(", ")] if chance[:1].isalpha() else []
    return max(scores, key=float) if scores else chance
