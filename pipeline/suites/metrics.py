"""Scores of one generated answer against its reference, for the generative suites.

The same functions score a checkpoint's generations (registered with lm-eval in
`lm_eval_metrics.py`) and the trivial baselines the builder records next to them
(`generative.py`), so a model and its baselines are measured by one piece of code:

    first_line_exact   1.0 when the first non-blank lines match (whitespace around them ignored)
    sentence_chrf      sacrebleu's sentence chrF, 0-100 (lm-eval's own `chrf` is corpus-level)
    rouge_l            rouge-score's ROUGE-L F-measure, 0-1 (its default tokenizer: lower-cased words)

Each task's score is the mean over its examples (lm-eval's `mean` aggregation, with a stderr).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF


def first_line(text: str) -> str:
    """The first non-blank line of `text`, stripped ('' when there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def first_line_exact(prediction: str, reference: str) -> float:
    return float(first_line(prediction) == first_line(reference))


@cache
def _chrf() -> CHRF:
    return CHRF()


def sentence_chrf(prediction: str, reference: str) -> float:
    return float(_chrf().sentence_score(prediction, [reference]).score)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


METRICS: dict[str, Callable[[str, str], float]] = {
    "first_line_exact": first_line_exact,
    "sentence_chrf": sentence_chrf,
    "rouge_l": rouge_l,
}
