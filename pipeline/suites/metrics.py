"""Scores of one generated answer against its reference, for the generative suites.

The same functions score a checkpoint's generations (registered with lm-eval in
`lm_eval_metrics.py`) and the trivial baselines the builder records next to them
(`generative.py`), so a model and its baselines are measured by one piece of code:

    first_line_exact   1.0 when the first non-blank lines match (whitespace around them ignored)
    sentence_chrf      sacrebleu's sentence chrF, 0-100 (lm-eval's own `chrf` is corpus-level)
    rouge_l            rouge-score's ROUGE-L F-measure, 0-1 (its default tokenizer: lower-cased words)

Each task's score is the mean over its examples (lm-eval's `mean` aggregation, with a stderr).

Every metric first cuts the prediction to the reference's budget (`within_budget`): a fine-tuned model
learns to stop where answers were cut, a zero-shot one runs on to `max_gen_toks`, and ROUGE-L and chrF
would otherwise score that length rather than the content. The cut keeps as many non-blank lines as
the reference has, then at most len(reference) + `slack_chars(reference)` characters, ending at a word
end. The slack lets a prediction finish the word that straddles the reference's length; a prediction
equal to the reference is never cut.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from functools import cache

from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF


def slack_chars(reference: str) -> int:
    """Characters a prediction may run past the reference's length: a tenth of it, at least 8."""
    return max(8, len(reference) // 10)


_THROUGH_LAST_WORD = re.compile(r".*\S(?=\s)", re.DOTALL)  # longest prefix ending right before whitespace


def within_budget(prediction: str, reference: str) -> str:
    """`prediction` cut to the reference's budget: its first k non-blank lines (k: the reference's, blank
    lines between them kept), then at most len(reference) + slack characters, cut at the last word end
    (a hard cut when no word ends there)."""
    wanted, kept = sum(1 for line in reference.split("\n") if line.strip()), []
    for line in prediction.split("\n"):
        if wanted <= 0:
            break
        kept.append(line)
        wanted -= bool(line.strip())
    text = "\n".join(kept)
    limit = len(reference) + slack_chars(reference)
    if len(text) <= limit:
        return text
    last_word = _THROUGH_LAST_WORD.match(text[: limit + 1])  # a word ending at `limit` still counts
    return last_word.group(0) if last_word else text[:limit]


def _budgeted(score: Callable[[str, str], float]) -> Callable[[str, str], float]:
    @functools.wraps(score)
    def scored(prediction: str, reference: str) -> float:
        return score(within_budget(prediction, reference), reference)

    return scored


def first_line(text: str) -> str:
    """The first non-blank line of `text`, stripped ('' when there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@_budgeted
def first_line_exact(prediction: str, reference: str) -> float:
    return float(first_line(prediction) == first_line(reference))


@cache
def _chrf() -> CHRF:
    return CHRF()


@_budgeted
def sentence_chrf(prediction: str, reference: str) -> float:
    return float(_chrf().sentence_score(prediction, [reference]).score)


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"])


@_budgeted
def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


METRICS: dict[str, Callable[[str, str], float]] = {
    "first_line_exact": first_line_exact,
    "sentence_chrf": sentence_chrf,
    "rouge_l": rouge_l,
}
