"""The eval table of a run: every `runs/<run>/eval/<name>/results.json` side by side, per task and metric.

One row per (task, metric):

    {"task": "sora_classify", "metric": "acc", "higher_is_better": True,
     "scores": {"pretrained": {"value": 0.61, "stderr": 0.02}, "scratch": {...}},
     "chance": {"uniform": 0.125, "majority": 0.139}}

`scores` has one entry per evaluated name that reported the metric (the folder name under eval/);
`chance` comes from the suites index recorded in results.json (None for perplexity metrics and for
tasks that are not built-in suites); a generative suite's metric also has `baselines`
{baseline: score}, what trivial answers score. Built from stored files alone.
"""

from __future__ import annotations

from typing import Any

from ..records import EvalResults
from ..storage import ObjectStore

CHANCE_METRICS = ("acc", "acc_norm")


def read_results(store: ObjectStore, run: str) -> dict[str, EvalResults]:
    """Every evaluation of `run`, by name."""
    return dict(sorted(EvalResults.load_all(store, run).items()))


def eval_table(store: ObjectStore, run: str) -> list[dict[str, Any]]:
    """Rows per task and metric across the run's evaluations (see the module docstring)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, document in read_results(store, run).items():
        higher = document.higher_is_better
        for task, metrics in document.results.items():
            for field, value in metrics.items():
                metric, comma, filter_name = field.partition(",")
                # lm-eval names metrics "<metric>,<filter>"; "alias" and "sample_len" are bookkeeping.
                if not comma or metric.endswith("_stderr") or not isinstance(value, int | float):
                    continue
                stderr = metrics.get(f"{metric}_stderr,{filter_name}")
                row = rows.setdefault(
                    (task, metric),
                    {
                        "task": task,
                        "metric": metric,
                        "higher_is_better": higher.get(task, {}).get(metric),
                        "scores": {},
                        "chance": None,
                    },
                )
                row["scores"][name] = {"value": value, "stderr": stderr if isinstance(stderr, int | float) else None}
                chance = document.chance.get(task)
                if chance and metric in CHANCE_METRICS:
                    row["chance"] = {"uniform": chance.uniform, "majority": chance.majority}
                if chance and chance.baselines and metric in chance.baselines:  # trivial answers, scored
                    row["baselines"] = chance.baselines[metric]
    return [rows[key] for key in sorted(rows)]
