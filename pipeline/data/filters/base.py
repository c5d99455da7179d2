"""The contract of one filter: a batch of texts in, a `Verdict` out.

A filter sees only the live (not yet rejected) documents of the sources it applies to, as a list of
Python strings (one Arrow batch of a read task, a few MB); it says per document whether to keep it
and, for a dropped one, why (`reasons`), may rewrite the kept texts (redaction, removed lines), may
add per-document columns (the detected language) and counts what it did (`counts`: summed into the
run's manifest stats as `<filter>/<counter>`). It keeps no state between batches, so the decisions
of a document do not depend on which block it was read in, nor on the run (refresh keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


@dataclass
class Verdict:
    """What a filter decided for a batch of `n` texts."""

    reasons: list[str | None]  # per text: None = kept, else the reason it was dropped
    texts: list[str] | None = None  # rewritten texts (same length), None when unchanged
    columns: dict[str, pa.Array] = field(default_factory=dict)  # extra per-text columns
    counts: dict[str, int] = field(default_factory=dict)  # what it did (e.g. {"email": 3})

    @property
    def keep(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)

    @classmethod
    def keep_all(cls, n: int, **kwargs) -> Verdict:
        return cls([None] * n, **kwargs)


class DocFilter:
    """Base of the filters: `spec` is the filter's config entry (pipeline/config/filters.py),
    `data` the data config (for shared settings such as the word tokenizer)."""

    # Extra columns a filter adds to every record table (name -> type), null where it did not run:
    # declared up front so every block of a run has one schema.
    columns: dict[str, pa.DataType] = {}

    def __init__(self, spec, data) -> None:
        self.spec, self.label = spec, spec.label

    def __call__(self, texts: list[str]) -> Verdict:
        raise NotImplementedError
