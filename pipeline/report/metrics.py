"""Which lm-eval metrics the eval table shows, and how: one rule per metric name (results.json keeps all).

    metric                          shown as                     why
    acc, acc_norm                   % (fraction x 100)           multiple choice
    exact_match, first_line_exact,  %                            generation, scored 0-1 per answer
    exact_match_first_line, rouge_l
    chrf, sentence_chrf             0-100 as reported            generation (chrF is already 0-100)
    bits_per_byte                   3 decimals                   loglikelihood_rolling
    byte_perplexity, word_perplexity  hidden when the task also  both are exponentials of the same
                                    reports bits_per_byte        log-likelihood; word perplexity of a
                                                                 random-init model runs into the 1e10s
    any other metric                3 significant figures        a user's own lm-eval task

The gain (pretrained minus scratch) is in the shown unit: points for %, the metric's own otherwise;
the metric's column says which direction is better (lm-eval's `higher_is_better`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricView:
    percent: bool = False  # a 0-1 fraction, shown x 100 with one decimal
    digits: int | None = 3  # decimals; None: three significant figures (a scale we do not know)
    replaced_by: str | None = None  # hidden when the task reports this metric too

    def _format(self, value: float, sign: str = "") -> str:
        if self.percent:
            return f"{value * 100:{sign}.1f}"
        return f"{value:{sign}.{self.digits}f}" if self.digits is not None else f"{value:{sign}.3g}"

    def number(self, value: float) -> str:
        return self._format(value)

    def gain(self, difference: float) -> str:
        return self._format(difference, "+") + (" pts" if self.percent else "")


_PERCENT = MetricView(percent=True)
VIEWS: dict[str, MetricView] = {
    "acc": _PERCENT,
    "acc_norm": _PERCENT,
    "exact_match": _PERCENT,
    "first_line_exact": _PERCENT,
    "exact_match_first_line": _PERCENT,
    "rouge_l": _PERCENT,
    "chrf": MetricView(digits=1),
    "sentence_chrf": MetricView(digits=1),
    "bits_per_byte": MetricView(digits=3),
    "byte_perplexity": MetricView(replaced_by="bits_per_byte"),
    "word_perplexity": MetricView(replaced_by="bits_per_byte"),
}
OTHER = MetricView(digits=None)


def view(metric: str) -> MetricView:
    return VIEWS.get(metric, OTHER)


def shown(metric: str, task_metrics: set[str]) -> bool:
    """Whether the table shows `metric` of a task that reports `task_metrics`."""
    replacement = view(metric).replaced_by
    return replacement is None or replacement not in task_metrics


def direction(higher_is_better: bool | None) -> str:
    """The arrow after a metric's name: which way is better (nothing when lm-eval does not say)."""
    return {True: "\u00a0↑", False: "\u00a0↓"}.get(higher_is_better, "")  # no-break space: never wrapped alone
