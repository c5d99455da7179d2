"""Registers the generative suites' metrics with lm-eval under the names their task YAML uses
(`first_line_exact`, `sentence_chrf`, `rouge_l`; mean over examples).

Registering in Python rather than shipping a metrics file next to each stored YAML keeps the suites
plain data: the YAML is rewritten when materialized (`materialize_suites`), which `!function` tags
would not survive, and the code that scores a model is the code that scored its baselines
(`metrics.py`). `pipeline.evaluation.harness` imports this module, so every process that evaluates
with Sora's lm-eval models has them.
"""

from __future__ import annotations

from lm_eval.api.registry import register_metric

from .metrics import METRICS


def _lm_eval_metric(score):
    """lm-eval calls a generate_until metric once per example, with one reference and one prediction."""

    def metric(references: list[str], predictions: list[str], **_: object) -> float:
        return score(predictions[0], references[0])

    metric.__name__ = score.__name__
    return metric


for _name, _score in METRICS.items():
    register_metric(metric=_name, higher_is_better=True, output_type="generate_until", aggregation="mean")(
        _lm_eval_metric(_score)
    )
