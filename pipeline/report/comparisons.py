"""Which evaluated checkpoints the report sets side by side, and the tables that compare them.

Every evaluation of a run is stored under a name (pipeline/evaluation/checkpoints.py). The report
groups the names into comparisons, each a table of the same (task, metric) rows:

    main           pretrained vs scratch (the classify suite: the classifiers fine-tuned from each)
    generative     fine-tuned on a generative suite from the pretrained export vs from scratch,
                   next to the pretrained model zero-shot
    distillation   distilled student vs the same student trained without the teacher, next to the teacher
    quantization   the int8 / int4 copies vs the original export

A comparison shows only when one of its names was evaluated, and only the rows one of the two
columns its gain compares has a score for (not rows the reference column alone has). Its `gain`
is one column minus another, with the standard error of the difference of two independent
estimates, sqrt(se_a^2 + se_b^2): the checkpoints are scored on the same examples, so this
over-states the error of a paired difference, never under-states it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config.finetune import FinetuneConfig
from .metrics import MetricView, direction, shown, view


@dataclass(frozen=True)
class Comparison:
    title: str
    columns: tuple[tuple[str, tuple[str, ...]], ...]  # (header, evaluated names: the first present fills it)
    gain: tuple[int, int]  # gain = column a - column b (indexes into `columns`)
    gain_header: str
    note: str


def comparisons(finetune: FinetuneConfig, names: set[str]) -> list[Comparison]:
    """The comparisons of a run whose evaluations are `names` (the main one always first)."""
    method = finetune.method
    found = [
        Comparison(
            "",
            (
                ("pretrained", ("pretrained", f"ft-{method}-pretrained")),
                ("scratch", ("scratch", f"ft-{method}-scratch")),
            ),
            (0, 1),
            "gain",
            "gain = pretrained − scratch. For `sora_classify` the columns are the classifiers fine-tuned from "
            "the pretrained model and from random initialization with the same budget; for the other suites, "
            "the pretrained language model and a randomly initialized one.",
        )
    ]
    generate = f"ft-generate-{method}-"
    if any(name.startswith(generate) for name in names):
        found.append(
            Comparison(
                "Generative fine-tuning",
                (
                    ("tuned from pretrained", (f"{generate}pretrained",)),
                    ("tuned from scratch", (f"{generate}scratch",)),
                    ("zero-shot", ("pretrained",)),
                ),
                (0, 1),
                "gain",
                "gain = fine-tuned from the pretrained export − fine-tuned from random initialization "
                "(same suite, same budget, loss on the answer tokens only); zero-shot: the pretrained model "
                "before fine-tuning.",
            )
        )
    if {"distilled", "distill-baseline"} & names:
        found.append(
            Comparison(
                "Distillation",
                (("distilled", ("distilled",)), ("baseline", ("distill-baseline",)), ("teacher", ("pretrained",))),
                (0, 1),
                "gain",
                "gain = the student trained with the teacher's KL − the same student trained without it on "
                "the same tokens.",
            )
        )
    quantized = [name for name in ("int8", "int4") if name in names]
    if quantized:
        found.append(
            Comparison(
                "Quantization",
                (*((name, (name,)) for name in quantized), ("original", ("pretrained",))),
                (0, len(quantized)),
                f"{quantized[0]} − original",
                "The weight-only quantized copies of the pretrained export, scored on the same examples.",
            )
        )
    return found


def _score(cell: dict | None, shown_as: MetricView) -> str:
    if not cell:
        return "-"
    text = shown_as.number(cell["value"])
    if cell.get("stderr") is not None:
        text += f" ± {shown_as.number(cell['stderr'])}"
    return text


def _gain(a: dict | None, b: dict | None, shown_as: MetricView) -> str:
    if not a or not b:
        return "-"
    text = shown_as.gain(a["value"] - b["value"])
    if a.get("stderr") is None or b.get("stderr") is None:
        return text
    error = f" ± {shown_as.number(math.hypot(a['stderr'], b['stderr']))}"
    return text[:-4] + error + " pts" if text.endswith(" pts") else text + error


def _chance(row: dict[str, Any], shown_as: MetricView) -> str:
    """Uniform / majority guessing (choice tasks), or the trivial answers' scores (generative suites)."""
    chance = row.get("chance") or {}
    if chance.get("uniform") is not None or chance.get("majority") is not None:
        return " / ".join(f"{v * 100:.1f}" if v is not None else "-" for v in (chance["uniform"], chance["majority"]))
    baselines = row.get("baselines") or {}
    return ", ".join(f"{name} {shown_as.number(value)}" for name, value in sorted(baselines.items())) or "-"


def comparison_rows(comparison: Comparison, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of one comparison over the eval table's rows (pipeline/evaluation/table.py)."""
    reported: dict[str, set[str]] = {}
    for row in rows:
        reported.setdefault(row["task"], set()).add(row["metric"])
    body = []
    for row in rows:
        if not shown(row["metric"], reported[row["task"]]):
            continue
        cells = [next((row["scores"][n] for n in names if n in row["scores"]), None) for _, names in comparison.columns]
        a, b = comparison.gain
        if not (cells[a] or cells[b]):  # a reference column alone (the teacher, the original) is no row
            continue
        shown_as = view(row["metric"])
        body.append(
            [
                row["task"],
                row["metric"] + direction(row.get("higher_is_better")),
                *(_score(cell, shown_as) for cell in cells),
                _gain(cells[a], cells[b], shown_as),
                _chance(row, shown_as),
            ]
        )
    header = ["task", "metric", *(label for label, _ in comparison.columns), comparison.gain_header, "chance"]
    return header, body
