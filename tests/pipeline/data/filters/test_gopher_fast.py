"""`gopher_fast` against datatrove's own `filter`: for every document, the same result (True, or
False and the same reason, or the same ZeroDivisionError) from the Gopher quality and repetition
filters, with datatrove's settings and with tighter ones (one rule at a time, thresholds at a
document's exact ratio, unusual n-gram sizes), in batches cut small and large.

The documents: a deterministic sample of real files (the stdlib's .py, .txt and .rst files, the
installed packages' METADATA and license files; ~1.6 MB, each cut to 8000 characters) and hand-made
adversarial ones (empty, whitespace, one word, punctuation only, repeated lines and paragraphs,
ties between the most frequent n-grams, concatenations that collide, long periodic repeats,
bullets and ellipses, characters outside the BMP, lone surrogates).
"""

from __future__ import annotations

import math
import random
import re
import sysconfig
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
from datatrove.utils.text import PUNCTUATION_SET, split_into_words
from datatrove.utils.word_tokenizers import WordTokenizer

from pipeline.config.data import DataConfig
from pipeline.config.filters import GopherQualityFilter as GopherQualitySpec
from pipeline.config.filters import GopherRepetitionFilter as GopherRepetitionSpec
from pipeline.data.filters import gopher_fast
from pipeline.data.filters.gopher_fast import (
    gopher_quality,
    gopher_quality_batch,
    gopher_repetition,
    gopher_repetition_batch,
)
from pipeline.data.filters.heuristics import GopherQualityDocFilter, GopherRepetitionDocFilter
from pipeline.data.filters.words import word_tokenizer

TOKENIZER = word_tokenizer("fast")
MAX_CHARS = 8000


def _sample(paths: list[Path], count: int) -> list[str]:
    """`count` of the sorted files, evenly spread, read as UTF-8 (others skipped), cut short."""
    paths = sorted(paths)
    step = max(1, len(paths) // count)
    texts = []
    for path in paths[::step][:count]:
        try:
            texts.append(path.read_text(encoding="utf-8")[:MAX_CHARS])
        except (UnicodeDecodeError, OSError):
            continue
    return texts


@cache
def real_documents() -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    meta = [
        p
        for p in site.glob("*.dist-info/**/*")
        if p.is_file() and (p.name == "METADATA" or p.name.startswith(("LICENSE", "COPYING", "NOTICE")))
    ]
    docs = [p for p in stdlib.rglob("*") if p.suffix in (".txt", ".rst") and "site-packages" not in p.parts]
    code = [*stdlib.glob("*.py"), *(p for p in stdlib.glob("*/*.py") if "site-packages" not in p.parts)]
    texts = _sample(code, 120) + _sample(docs, 60) + _sample(meta, 150)
    assert len(texts) >= 200, len(texts)
    return tuple(texts)


SENTENCE = "the quick brown fox jumps over the lazy dog and then it rests"
ADVERSARIAL = [
    "",
    " ",
    "\n",
    "   \n ",
    "\n\n\n",
    "\t\r\n\x0b\x0c",
    "word",
    "a",
    "!!! ???",
    "...",
    "…",
    "#",
    "# # # the and",
    "... … .... the and to of",
    # repeated lines and paragraphs, alone and among distinct ones
    "same line\n" * 10,
    "same line\n" + "\n".join(f"line number {i}" for i in range(10)) + "\nsame line",
    "para one is here\n\npara one is here\n\n\npara two\n\n\n\npara one is here",
    "\n\n".join(["x"] * 3 + [SENTENCE] * 2),
    # ties between the most frequent n-grams: the first-inserted wins, whatever its length
    "aa b c dd aa b c dd",
    "b c aa dd b c aa dd x",
    "x y z w x y z w v u v u",
    "one two one two three four three four five six five six",
    # "".join collisions: ab|c vs a|bc, for every n up to 10 and beyond
    "ab c d e f g h i j k l m and a bc d e f g h i j k l m",
    "ab c d e f a bc d e f ab c d e f a bc d e f",
    "x ab c y x a bc y x abc y " * 4,
    " ".join(["ab", "c"] * 30 + ["a", "bc"] * 30),
    # long periodic repeats: the greedy scan's skips matter
    (SENTENCE + " ") * 40,
    "a b " * 200,
    "a b c " * 150,
    "a " * 300,
    "a " * 7 + "b " * 7 + "a " * 7,
    " ".join(f"w{i % 13} w{i % 7}" for i in range(400)),
    (SENTENCE + " ") * 3 + " ".join(f"unique{i}" for i in range(200)) + (" " + SENTENCE) * 3,
    # bullets and ellipses
    "- a\n- b\n• c\nd\n  - e",
    "a...\nb…\nc...\nd\n e ...  ",
    "\n".join(f"• item {i} of the and list" for i in range(12)),
    "\n".join(f"line {i} trails off..." for i in range(12)),
    # beyond ASCII and the BMP, lone surrogates
    "naïve café — résumé… Ünïcödé ſ ǅ",
    "😀😀 😀 😀😀 😀 𝔘𝔫𝔦 𝔘𝔫𝔦 the and",
    "\ud800 abc \udfff abc \ud800 abc",
    "1999 2000 2001 the and of to" * 10,
    # stop words are case-sensitive: "The" and "AND" are not "the" and "and"
    "The " + " ".join(SENTENCE.replace(" the ", " ").replace(" and ", " ").split()[1:] * 6) + " AND the",
]


def documents() -> list[str]:
    return [*real_documents(), *ADVERSARIAL]


def datatrove(step, texts: list[str]) -> list:
    results = []
    for text in texts:
        try:
            with warnings.catch_warnings():  # np.mean of no words: NaN, "Mean of empty slice"
                warnings.simplefilter("ignore", RuntimeWarning)
                results.append(step.filter(Document(text=text, id="x")))
        except ZeroDivisionError:
            results.append("ZeroDivisionError")
    return results


def fast(batch, step, texts: list[str]) -> list:
    return ["ZeroDivisionError" if isinstance(r, ZeroDivisionError) else r for r in batch(step, texts)]


def _words(text: str) -> list[str]:
    return split_into_words(text, TOKENIZER)


def at_ratio(text: str, rule: str) -> float:
    """A document's exact ratio for a rule, as datatrove computes it (a threshold right on it)."""
    words = _words(text)
    if rule == "avg":
        return float(np.mean([len(w) for w in words if any(ch not in PUNCTUATION_SET for ch in w)]))
    if rule == "alpha":
        return sum(any(c.isalpha() for c in w) for w in words) / len(words)
    if rule.startswith("top"):
        return find_top_duplicate(get_n_grams(words, int(rule[3:]))) / len(text)
    return find_all_duplicate(words, int(rule[3:])) / len(text)


@cache
def boundary_documents() -> tuple[str, ...]:
    """Three real documents of some length: their exact ratios make the boundary thresholds."""
    texts = [t for t in real_documents() if len(_words(t)) > 200]
    return tuple(texts[:: max(1, len(texts) // 3)][:3])


QUALITY_OFF = dict.fromkeys(
    [
        "min_doc_words",
        "max_doc_words",
        "min_avg_word_length",
        "max_avg_word_length",
        "max_symbol_word_ratio",
        "max_bullet_lines_ratio",
        "max_ellipsis_lines_ratio",
        "max_non_alpha_words_ratio",
        "min_stop_words",
    ]
)

QUALITY_SETTINGS = {
    "default": {},
    "tight": {
        "min_doc_words": 20,
        "max_doc_words": 1200,
        "min_avg_word_length": 3.5,
        "max_avg_word_length": 6,
        "max_symbol_word_ratio": 0.02,
        "max_bullet_lines_ratio": 0.2,
        "max_ellipsis_lines_ratio": 0.05,
        "max_non_alpha_words_ratio": 0.85,
        "min_stop_words": 4,
    },
    # Each rule alone, so that every document reaches it (and the words-less ones divide by zero).
    "avg_only": {**QUALITY_OFF, "min_avg_word_length": 4.2, "max_avg_word_length": 5.1},
    "symbols_only": {**QUALITY_OFF, "max_symbol_word_ratio": 0.005},
    "lines_only": {**QUALITY_OFF, "max_bullet_lines_ratio": 0.05, "max_ellipsis_lines_ratio": 0.01},
    "alpha_only": {**QUALITY_OFF, "max_non_alpha_words_ratio": 0.7},
    "stop_words_only": {**QUALITY_OFF, "min_stop_words": 6, "stop_words": ["the", "a", "of", "def", "self", "is"]},
}

REPETITION_NGRAMS_ONLY = {
    "dup_para_frac": None,
    "dup_para_char_frac": None,
    "dup_line_frac": None,
    "dup_line_char_frac": None,
}

REPETITION_SETTINGS = {
    "default": {},
    "tight_lines": {
        "dup_line_frac": 0.05,
        "dup_para_frac": 0.05,
        "dup_line_char_frac": 0.02,
        "dup_para_char_frac": 0.02,
    },
    "tight_ngrams": {
        **REPETITION_NGRAMS_ONLY,
        "top_n_grams": [(2, 0.06), (3, 0.04), (4, 0.03)],
        "dup_n_grams": [(5, 0.08), (6, 0.07), (7, 0.06), (8, 0.05), (9, 0.04), (10, 0.03)],
    },
    "dup_ngrams_only": {**REPETITION_NGRAMS_ONLY, "top_n_grams": [], "dup_n_grams": [(10, 0.03), (7, 0.05), (5, 0.07)]},
    "odd_sizes": {
        **REPETITION_NGRAMS_ONLY,
        "top_n_grams": [(1, 0.25), (6, 0.02), (12, 0.005)],
        "dup_n_grams": [(1, 0.6), (2, 0.3), (3, 0.2), (11, 0.02), (13, 0.01)],
    },
}


@pytest.fixture(params=[gopher_fast._CHUNK_WORDS, 700], ids=["chunks_64k_words", "chunks_700_words"])
def chunk_words(request, monkeypatch):
    monkeypatch.setattr(gopher_fast, "_CHUNK_WORDS", request.param)
    return request.param


@pytest.mark.parametrize("settings", QUALITY_SETTINGS.values(), ids=QUALITY_SETTINGS.keys())
def test_quality_oracle(settings, chunk_words):
    step = GopherQualityFilter(**settings, language=TOKENIZER)
    texts = documents()
    expected = datatrove(step, texts)
    assert fast(gopher_quality_batch, step, texts) == expected
    assert len(set(map(str, expected))) > 1  # the settings do decide something


@pytest.mark.parametrize("settings", REPETITION_SETTINGS.values(), ids=REPETITION_SETTINGS.keys())
def test_repetition_oracle(settings, chunk_words):
    step = GopherRepetitionFilter(**settings, language=TOKENIZER)
    texts = documents()
    expected = datatrove(step, texts)
    assert fast(gopher_repetition_batch, step, texts) == expected
    assert len(set(map(str, expected))) > 1


QUALITY_BOUNDARIES = [
    # rule, setting, the reason just past the document's own ratio
    ("avg", "min_avg_word_length", +1, "gopher_below_avg_threshold"),
    ("avg", "max_avg_word_length", -1, "gopher_above_avg_threshold"),
    ("alpha", "max_non_alpha_words_ratio", +1, "gopher_below_alpha_threshold"),
]


@pytest.mark.parametrize(("rule", "setting", "past", "why"), QUALITY_BOUNDARIES, ids=[b[1] for b in QUALITY_BOUNDARIES])
def test_quality_at_a_documents_exact_ratio(rule, setting, past, why):
    # The threshold is a document's own mean or ratio (datatrove's float): kept there, dropped at
    # the next float past it; np.mean against the fast path's sum / count.
    for text in boundary_documents():
        ratio = at_ratio(text, rule)
        for threshold, expected in ((ratio, True), (math.nextafter(ratio, past * math.inf), (False, why))):
            step = GopherQualityFilter(**{**QUALITY_OFF, setting: threshold}, language=TOKENIZER)
            assert datatrove(step, [text]) == [expected]
            assert fast(gopher_quality_batch, step, [text]) == [expected]


@pytest.mark.parametrize("rule", ["top2", "top3", "top4", "dup5", "dup7", "dup10"])
def test_repetition_at_a_documents_exact_ratio(rule):
    n = int(rule[3:])
    texts = list(boundary_documents())
    why = f"top_{n}_gram" if rule.startswith("top") else f"duplicated_{n}_n_grams"
    for i, text in enumerate(texts):
        ratio = at_ratio(text, rule)
        for threshold, expected in ((ratio, True), (math.nextafter(ratio, -math.inf), (False, why))):
            if rule.startswith("top"):
                ngrams = {"top_n_grams": [(n, threshold)], "dup_n_grams": []}
            else:
                ngrams = {"top_n_grams": [], "dup_n_grams": [(n, threshold)]}
            step = GopherRepetitionFilter(**REPETITION_NGRAMS_ONLY, **ngrams, language=TOKENIZER)
            results = datatrove(step, texts)
            assert results[i] == expected
            assert fast(gopher_repetition_batch, step, texts) == results


def test_hash_collisions_cost_time_not_results(monkeypatch):
    # 12 bits of the n-gram hashes (still a function of the string and its text): most candidates
    # collide, within and across texts, and are told apart by their strings.
    real = gopher_fast._Batch._span_hashes
    mask = np.uint64(0xF0000000000000FF)
    monkeypatch.setattr(gopher_fast._Batch, "_span_hashes", lambda self, n: real(self, n) & mask)
    texts = documents()
    step = GopherRepetitionFilter(**REPETITION_SETTINGS["dup_ngrams_only"], language=TOKENIZER)
    assert fast(gopher_repetition_batch, step, texts) == datatrove(step, texts)


def test_one_text_functions_raise_like_datatrove():
    quality = GopherQualityFilter(min_doc_words=None, language=TOKENIZER)
    repetition = GopherRepetitionFilter(language=TOKENIZER)
    for text in ADVERSARIAL:
        assert datatrove(quality, [text]) == [_one(gopher_quality, quality, text)]
        assert datatrove(repetition, [text]) == [_one(gopher_repetition, repetition, text)]
    with pytest.raises(ZeroDivisionError):
        gopher_quality(quality, "  \n ")


def _one(function, step, text):
    try:
        return function(step, text)
    except ZeroDivisionError:
        return "ZeroDivisionError"


class PipeTokenizer(WordTokenizer):
    """Words are what lies between "|": they may be empty or hold spaces (as spaCy's whitespace
    tokens do), which " "-joined n-grams cannot tell apart."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split("|")

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def test_words_with_spaces_or_empty():
    texts = [
        "a b|c|a|b c|a b|c|x",
        "a|b c|a b|c|a|b c",
        "||a||a||",
        "|",
        " | | ",
        "the|and|" * 30,
        "a b|c d|e|a|b c|d e",
    ]
    tokenizer = PipeTokenizer()
    for settings in ({}, {"min_doc_words": None}, QUALITY_SETTINGS["alpha_only"]):
        step = GopherQualityFilter(**settings, language=tokenizer)
        assert fast(gopher_quality_batch, step, texts) == datatrove(step, texts)
    for settings in REPETITION_SETTINGS.values():
        step = GopherRepetitionFilter(**settings, language=tokenizer)
        assert fast(gopher_repetition_batch, step, texts) == datatrove(step, texts)


def test_ngram_counts_on_random_word_lists():
    # Small vocabularies with concatenation collisions, runs of repeats of every period: the
    # n-gram quantities themselves, against datatrove's helpers, many texts per batch.
    rng = random.Random(7)
    vocabularies = [["a", "b"], ["a", "b", "ab", "ba", ""], ["a", "bc", "ab", "c", "abc"], list("0123456")]
    for _ in range(300):
        vocabulary = rng.choice(vocabularies)
        lists = []
        for _ in range(rng.randint(1, 5)):
            base = [rng.choice(vocabulary) for _ in range(rng.randint(1, 15))]
            words: list[str] = []
            size = rng.randint(0, 80)
            while len(words) < size:
                words += base[: rng.randint(1, len(base))] if rng.random() < 0.7 else [rng.choice(vocabulary)]
            lists.append(words)
        batch = gopher_fast._Batch(lists)
        for n in range(1, 12):
            assert batch.duplicated_n_gram_chars(n).tolist() == [find_all_duplicate(w, n) for w in lists]
        for n in range(1, 6):
            tops = batch.top_n_gram_chars(n).tolist()
            assert [t for t, w in zip(tops, lists, strict=True) if len(w) >= n] == [
                find_top_duplicate(get_n_grams(w, n)) for w in lists if len(w) >= n
            ]


def test_paragraph_and_line_splits_are_datatrove_regexes():
    rng = random.Random(3)
    paragraphs, lines = re.compile(r"\n{2,}"), re.compile("\n+")
    for _ in range(20000):
        text = "".join(rng.choice(["a", "\n", " ", "\n\n", "b\n", "\r\n"]) for _ in range(rng.randint(0, 12)))
        assert gopher_fast._paragraphs(text.strip()) == paragraphs.split(text.strip())
        assert gopher_fast._lines(text) == lines.split(text)


def test_doc_filters_decide_as_datatrove():
    # The DocFilter wrappers: a reason per text, "empty" where datatrove divides by zero.
    data = DataConfig()
    texts = [*ADVERSARIAL, *real_documents()[:40]]
    for cls, spec, empty in (
        (GopherQualityDocFilter, GopherQualitySpec(min_doc_words=None), True),  # by a division by zero
        (GopherQualityDocFilter, GopherQualitySpec(), False),
        (GopherRepetitionDocFilter, GopherRepetitionSpec(), True),  # datatrove's own reason
    ):
        doc_filter = cls(spec, data)
        with warnings.catch_warnings():  # datatrove's np.mean of no words
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = [doc_filter.decide(Document(text=text, id=str(i))) for i, text in enumerate(texts)]
        assert doc_filter(texts).reasons == expected
        assert ("empty" in expected) is empty
