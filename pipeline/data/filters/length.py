"""The length filter: empty, too short and too long documents (code points after normalization)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .base import DocFilter, Verdict


class LengthDocFilter(DocFilter):
    def __call__(self, texts: list[str]) -> Verdict:
        # str.strip's notion of whitespace (Python's), not utf8proc's: the same rows as before the chain.
        stripped = np.array([len(t.strip()) for t in texts], dtype=np.int64)
        length = np.asarray(pc.utf8_length(pa.array(texts, pa.string())).to_numpy(zero_copy_only=False))
        reasons: list[str | None] = [None] * len(texts)
        # Later reasons win, as the earlier per-reason assignments did.
        for reason, mask in (
            ("empty", stripped == 0),
            ("too_short", (stripped > 0) & (stripped < self.spec.min_chars)),
            ("too_long", length > self.spec.max_chars),
        ):
            for i in np.flatnonzero(mask):
                reasons[i] = reason
        return Verdict(reasons)
