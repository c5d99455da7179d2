"""The quality heuristics (Gopher quality and repetition, C4, FineWeb): datatrove's filters, wrapped.

Each `DocFilter` here builds the matching datatrove filter from its config entry (the settings have
datatrove's names and defaults) and asks it about every text of a batch, so the rules, their order
and the drop reasons (`gopher_short_doc`, `dup_line_frac`, `top_2_gram`, `line_punct_ratio`...)
are datatrove's own. The two Gopher filters are the exception, by measurement: datatrove's do
Python work per word and per n-gram (with the splitting, 2.0 and 3.6 MB/s on one core, the slowest
of the chain), so their `filter` is re-implemented over numpy arrays, for a whole batch at a time,
in `gopher_fast.py`: exactly (the same decision and reason for every text, checked against
datatrove's in test_gopher_fast.py) and 2.7-3.4x (repetition) and 5-6x (quality) faster with the
words given. datatrove's filter object still parses the settings and holds them. What is ours:
the word splitter (`words.py`: one instance for all four, a text split once for the chain), a guard
where datatrove would divide by zero, and C4's line counters, which become the verdict's counts
instead of datatrove's `Stats`.
"""

from __future__ import annotations

from collections import Counter

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result

from ...config.filters import COMMON_FIELDS
from .base import DocFilter, Verdict
from .gopher_fast import Outcome, gopher_quality_batch, gopher_repetition_batch
from .words import word_tokenizer

# Settings of every config entry that are ours, not the datatrove filter's.
_OWN_FIELDS = COMMON_FIELDS


class _DatatroveDocFilter(DocFilter):
    """A datatrove filter asked about each text in turn; its reason string is the drop reason."""

    step_class: type[BaseFilter]

    def __init__(self, spec, data) -> None:
        super().__init__(spec, data)
        settings = spec.model_dump(exclude=_OWN_FIELDS)
        # An unknown setting fails here (TypeError), at chain build, not on the first batch.
        self.step = self.step_class(**settings, language=word_tokenizer(data.word_tokenizer))

    def __call__(self, texts: list[str]) -> Verdict:
        return Verdict([self.decide(Document(text=text, id=str(i))) for i, text in enumerate(texts)])

    def decide(self, doc: Document) -> str | None:
        """None to keep `doc`, else datatrove's reason for dropping it."""
        try:
            keep, reason = get_filter_result(self.step.filter(doc))
        except ZeroDivisionError:
            # Only a text without words gets here (datatrove divides by the word or line count,
            # e.g. Gopher quality with min_doc_words off).
            return "empty"
        return None if keep else reason or "dropped"


def _reason(outcome: Outcome) -> str | None:
    """`decide`'s answer for an outcome of `gopher_fast` (datatrove's result or its error)."""
    if isinstance(outcome, ZeroDivisionError):
        return "empty"  # as in `decide`
    keep, reason = get_filter_result(outcome)
    return None if keep else reason or "dropped"


class GopherQualityDocFilter(_DatatroveDocFilter):
    """Word count, mean word length, '#' and ellipsis ratios, bullet and ellipsis lines, alphabetic
    words, stop words (Rae et al. 2021). datatrove's rules, decided by `gopher_fast` for the batch."""

    step_class = GopherQualityFilter

    def __call__(self, texts: list[str]) -> Verdict:
        return Verdict([_reason(outcome) for outcome in gopher_quality_batch(self.step, texts)])


class GopherRepetitionDocFilter(_DatatroveDocFilter):
    """Duplicate lines and paragraphs, most frequent 2-4-grams, duplicated 5-10-grams. datatrove's
    rules, decided by `gopher_fast` for the batch."""

    step_class = GopherRepetitionFilter

    def __call__(self, texts: list[str]) -> Verdict:
        return Verdict([_reason(outcome) for outcome in gopher_repetition_batch(self.step, texts)])


class FineWebDocFilter(_DatatroveDocFilter):
    """Lines ending in punctuation, short lines, duplicated line characters, newlines per word."""

    step_class = FineWebQualityFilter


class C4DocFilter(_DatatroveDocFilter):
    """C4's rules: removes lines (no terminal punctuation, too few words, javascript, policy, a too
    long word), drops documents (lorem ipsum, a curly bracket, too few sentences left).

    The kept texts are the rewritten ones. Counts are datatrove's line counters (`line-total`,
    `line-kept`, `line-filter-<why>`) summed over the kept documents only, so they say what was
    removed from the output; the dropped documents are counted by their reject reason.
    """

    step_class = C4QualityFilter

    def __init__(self, spec, data) -> None:
        super().__init__(spec, data)
        self._doc_counts: Counter[str] = Counter()
        # datatrove counts lines through PipelineStep.stat_update (into its Stats object): count
        # them per document instead, so a dropped document's lines can be left out.
        self.step.stat_update = self._count

    def _count(self, *labels: str, value: int = 1, unit: str | None = None) -> None:
        for label in labels:
            self._doc_counts[label] += value

    def __call__(self, texts: list[str]) -> Verdict:
        reasons: list[str | None] = []
        rewritten: list[str] = []
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            self._doc_counts.clear()
            doc = Document(text=text, id=str(i))
            reason = self.decide(doc)  # C4 rewrites doc.text
            reasons.append(reason)
            rewritten.append(doc.text if reason is None else text)
            if reason is None:
                counts.update(self._doc_counts)
        changed = any(new != old for new, old in zip(rewritten, texts, strict=True))
        return Verdict(reasons, texts=rewritten if changed else None, counts=dict(counts))


__all__ = ["C4DocFilter", "FineWebDocFilter", "GopherQualityDocFilter", "GopherRepetitionDocFilter"]
