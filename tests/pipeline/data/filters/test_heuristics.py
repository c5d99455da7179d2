"""The quality heuristics (datatrove's Gopher, C4 and FineWeb filters, wrapped): every rule at its
published default threshold, one document just inside (kept) and one just outside (dropped with
datatrove's reason), or for C4's line rules, a line kept and a line removed.

The documents are hand-written prose cut to the counts a rule needs; where a rule is a character
fraction, runs of spaces set the exact length (they add no word, line or n-gram).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.config.data import DataConfig, SourceConfig
from pipeline.config.filters import C4Filter, FineWebFilter, GopherQualityFilter, GopherRepetitionFilter
from pipeline.data.filters import words
from pipeline.data.filters.chain import FilterChain, filter_class
from pipeline.data.filters.heuristics import (
    C4DocFilter,
    FineWebDocFilter,
    GopherQualityDocFilter,
    GopherRepetitionDocFilter,
)
from pipeline.errors import UserError

# 143 words, no word pair twice (only "and" and "until" recur); stop words: the, and.
WORDS = """
the old keeper walked along quiet harbor walls and counted fishing boats while gulls circled above green
water near stone steps where children played games until bakers opened small shops selling warm bread
honey cakes fresh plums and bright oranges from southern farms later merchants arrived carrying silk
rolls copper pots painted bowls woven baskets wooden toys glass beads leather boots wool blankets
sailors repaired torn nets beside tall masts singing songs about distant islands storms whales pirates
lost treasure maps hidden caves ancient temples golden statues jade masks silver coins iron keys evening
lanterns glowed softly across narrow streets families gathered around long tables sharing stories
laughter grilled fish spiced rice roasted peppers sweet figs cold cider mint tea musicians tuned fiddles
drums flutes dancers twirled beneath strings paper flowers until midnight bells rang twelve times
everyone wandered home tired happy dreaming
""".split()

DATA = DataConfig()


def prose(n: int, start: int = 0) -> str:
    return " ".join(WORDS[start : start + n])


def chunks(n_lines: int, per_line: int, start: int = 0) -> list[str]:
    """`n_lines` lines of `per_line` prose words each, consecutive, without punctuation."""
    return [prose(per_line, start + i * per_line) for i in range(n_lines)]


def pad(text: str, length: int) -> str:
    """`text` made exactly `length` characters long by widening its first space."""
    assert len(text) <= length, (len(text), length)
    return text.replace(" ", " " * (1 + length - len(text)), 1)


def reason(doc_filter, text: str) -> str | None:
    return doc_filter([text]).reasons[0]


# --- Gopher quality --------------------------------------------------------------------------------

THE_AND = ["the", "and"]  # the two stop words every document needs (min_stop_words: 2)


def bullets(n: int) -> str:
    """10 lines of 5 words, the first `n` starting with a bullet."""
    return "\n".join(("- " if i % 2 else "• ") * (i < n) + line for i, line in enumerate(chunks(10, 5)))


def end_ellipsis(n: int) -> str:
    """10 lines of 5 words, the first `n` ending with an ellipsis."""
    return "\n".join(line + ("…" if i == 0 else "...") * (i < n) for i, line in enumerate(chunks(10, 5)))


def alpha(n_numbers: int) -> str:
    """50 words, the last `n_numbers` of them numbers (no alphabetic character)."""
    return " ".join(WORDS[: 50 - n_numbers] + ["1999"] * n_numbers)


GOPHER_QUALITY = [
    # rule, settings, kept, dropped, reason
    ("min_doc_words", {}, prose(50), prose(49), "gopher_short_doc"),
    ("max_doc_words", {"max_doc_words": 60}, prose(60), prose(61), "gopher_long_doc"),
    (
        "min_avg_word_length",  # mean 3.0, then 2.98
        {},
        " ".join(THE_AND + ["cat"] * 48),
        " ".join(THE_AND + ["cat"] * 47 + ["ox"]),
        "gopher_below_avg_threshold",
    ),
    (
        "max_avg_word_length",  # mean 10.0, then 10.02
        {},
        " ".join(THE_AND + ["everything"] * 46 + ["uncharacteristics"] * 2),
        " ".join(THE_AND + ["everything"] * 45 + ["everythings"] + ["uncharacteristics"] * 2),
        "gopher_above_avg_threshold",
    ),
    # '#' per word (the '#' are words too): 6/60, then 7/61
    ("hash_ratio", {}, prose(54) + " #" * 6, prose(54) + " #" * 7, "gopher_too_many_hashes"),
    ("ellipsis_ratio", {}, "... " * 6 + prose(54), "... " * 7 + prose(54), "gopher_too_many_ellipsis"),
    ("bullet_lines", {}, bullets(9), bullets(10), "gopher_too_many_bullets"),  # 0.9, then 1.0
    ("ellipsis_lines", {}, end_ellipsis(3), end_ellipsis(4), "gopher_too_many_end_ellipsis"),  # 0.3, then 0.4
    # words with a letter: 0.8, then 0.78 (datatrove's max_non_alpha_words_ratio is that minimum)
    ("alpha_words", {}, alpha(10), alpha(11), "gopher_below_alpha_threshold"),
    (
        "stop_words",  # the + and, then the alone
        {},
        prose(60),
        " ".join("or" if w == "and" else w for w in WORDS[:60]),
        "gopher_enough_stop_words",
    ),
]


@pytest.mark.parametrize(
    ("settings", "kept", "dropped", "why"), [c[1:] for c in GOPHER_QUALITY], ids=[c[0] for c in GOPHER_QUALITY]
)
def test_gopher_quality(settings, kept, dropped, why):
    doc_filter = GopherQualityDocFilter(GopherQualityFilter(**settings), DATA)
    assert doc_filter([kept, dropped]).reasons == [None, why]


def test_gopher_quality_without_words_is_empty_not_an_error():
    # min_doc_words off: datatrove would divide by the word count.
    doc_filter = GopherQualityDocFilter(GopherQualityFilter(min_doc_words=None), DATA)
    assert doc_filter(["   \n ", "!!! ???"]).reasons == ["empty", "gopher_below_alpha_threshold"]


# --- Gopher repetition -----------------------------------------------------------------------------

PARAS = chunks(6, 10)  # six distinct paragraphs
SEE = "See above."
URL = "https://example.com/a/rather/long/path/to/the/same/page.html"  # one word, 60 characters


def interleave(uniques: list[str], repeated: str, times: int) -> list[str]:
    """`uniques` with `repeated` after each of the first `times` of them (never two in a row)."""
    return [part for i, u in enumerate(uniques) for part in ([u, repeated] if i < times else [u])]


def url_twice(sep: str, length: int) -> str:
    """Four prose parts and the URL twice, `length` characters: the second URL is len(URL)/length."""
    return pad(sep.join(interleave(chunks(4, 5), URL, 2)), length)


def phrase_times(phrase: str, times: int, length: int, per: int = 4) -> str:
    """`phrase` `times` times among distinct prose words, `length` characters."""
    parts = interleave(chunks(times + 1, per), phrase, times)
    return pad(" ".join(parts), length)


SENTENCE = "subscribers receive exclusive weekly discounts newsletters giveaways invitations priority support"
SENTENCE_CHARS = len(SENTENCE.replace(" ", ""))  # what a duplicated 10-gram counts: 88

GOPHER_REPETITION = [
    # rule, settings, kept, dropped, reason
    # 10 paragraphs, 3 then 4 of them duplicates
    (
        "dup_para_frac",
        {},
        "\n\n".join(interleave(PARAS, SEE, 4)),
        "\n\n".join(interleave(PARAS[:5], SEE, 5)),
        "dup_para_frac",
    ),
    # the second URL paragraph: 60 of 300 characters (0.2), then 61 of 302
    (
        "dup_para_char_frac",
        {},
        url_twice("\n\n", 300),
        url_twice("\n\n", 300).replace(URL, URL + "x"),
        "dup_para_char_frac",
    ),
    # the same as lines of one paragraph
    (
        "dup_line_frac",
        {},
        "\n".join(interleave(PARAS, SEE, 4)),
        "\n".join(interleave(PARAS[:5], SEE, 5)),
        "dup_line_frac",
    ),
    (
        "dup_line_char_frac",
        {},
        url_twice("\n", 300),
        url_twice("\n", 300).replace(URL, URL + "x"),
        "dup_line_char_frac",
    ),
    # the most frequent n-gram's characters, all its occurrences: 5 x 8 / 200 = 0.2, then /199
    ("top_2_gram", {}, phrase_times("new york", 5, 200), phrase_times("new york", 5, 199), "top_2_gram"),
    # 4 x 13 / 289 = 0.1799, then / 288 = 0.1806 (threshold 0.18)
    ("top_3_gram", {}, phrase_times("new york city", 4, 289), phrase_times("new york city", 4, 288), "top_3_gram"),
    # 4 x 18 / 450 = 0.16, then / 449
    (
        "top_4_gram",
        {},
        phrase_times("the new york times", 4, 450),
        phrase_times("the new york times", 4, 449),
        "top_4_gram",
    ),
    # a repeated 10-word sentence: its second copy's characters (no spaces) 0.10 of the text, then above
    (
        "duplicated_10_n_grams",
        {},
        phrase_times(SENTENCE, 2, 10 * SENTENCE_CHARS, per=15),
        phrase_times(SENTENCE, 2, 10 * SENTENCE_CHARS - 1, per=15),
        "duplicated_10_n_grams",
    ),
    # a repeated 5-word phrase, top n-grams off to see the 5-gram rule alone: 19 / 127 = 0.1496, then /126
    (
        "duplicated_5_n_grams",
        {"top_n_grams": []},
        phrase_times("click here to read more", 2, 127),
        phrase_times("click here to read more", 2, 126),
        "duplicated_5_n_grams",
    ),
]


@pytest.mark.parametrize(
    ("settings", "kept", "dropped", "why"), [c[1:] for c in GOPHER_REPETITION], ids=[c[0] for c in GOPHER_REPETITION]
)
def test_gopher_repetition(settings, kept, dropped, why):
    doc_filter = GopherRepetitionDocFilter(GopherRepetitionFilter(**settings), DATA)
    assert doc_filter([kept, dropped]).reasons == [None, why]


# --- C4 --------------------------------------------------------------------------------------------

BASE = [  # five sentences, five lines: just enough (min_num_sentences: 5)
    "The old keeper walked along the quiet harbor.",
    "Gulls circled above the green water.",
    "Children played games near the stone steps.",
    "Bakers opened small shops at dawn.",
    "Merchants arrived carrying silk and copper pots.",
]

C4_LINES = [
    # rule, line kept, line removed, its counter
    ("terminal_punct", "It ends with a period.", "It ends without one", "no_terminal_punc"),
    ("terminal_quote", 'She said "yes."', "It trails off...", "no_terminal_punc"),
    ("min_words_per_line", "Three words here.", "Two words.", "too_few_words"),
    ("javascript", "Java scripts run here.", "Please enable JavaScript to continue.", "javascript"),
    ("policy", "We baked cookies for everyone.", "This site uses cookies for analytics.", "policy"),
    ("max_word_length", "a" * 1000 + " is long.", "a" * 1001 + " is long.", "too_long_word"),
]


@pytest.mark.parametrize(("kept", "removed", "counter"), [c[1:] for c in C4_LINES], ids=[c[0] for c in C4_LINES])
def test_c4_line_rules(kept, removed, counter):
    doc_filter = C4DocFilter(C4Filter(), DATA)
    verdict = doc_filter(["\n".join([*BASE, kept]), "\n".join([*BASE, removed])])
    assert verdict.reasons == [None, None]
    assert verdict.texts == ["\n".join([*BASE, kept]), "\n".join(BASE)]
    assert verdict.counts == {
        "line-total": 12,
        "line-kept": 11,
        f"line-filter-{counter}": 1,
    }


def test_c4_removes_citations():
    verdict = C4DocFilter(C4Filter(), DATA)(["\n".join([*BASE, "The harbor is old.[1] It was rebuilt.[edit]"])])
    assert verdict.texts == ["\n".join([*BASE, "The harbor is old. It was rebuilt."])]


C4_DOCS = [
    # rule, kept, dropped, reason
    ("lorem_ipsum", "Lorem, ipsum dolor sit amet.", "Lorem ipsum dolor sit amet.", "lorem_ipsum"),
    # only lines that pass the line rules are looked at: this one has no terminal punctuation
    ("lorem_ipsum_removed_line", "Lorem ipsum dolor sit amet", "Lorem ipsum dolor sit amet!", "lorem_ipsum"),
    ("curly_bracket", "A set (1, 2) of numbers.", "A set {1, 2} of numbers.", "curly_bracket"),
]


@pytest.mark.parametrize(("kept", "dropped", "why"), [c[1:] for c in C4_DOCS], ids=[c[0] for c in C4_DOCS])
def test_c4_document_rules(kept, dropped, why):
    doc_filter = C4DocFilter(C4Filter(), DATA)
    assert doc_filter(["\n".join([*BASE, kept]), "\n".join([*BASE, dropped])]).reasons == [None, why]


@pytest.mark.parametrize(
    ("kept", "dropped"),
    [
        (BASE, BASE[:4]),
        # two sentences on one line count twice; a number's period ends none
        ([*BASE[:3], "One more. And another."], [*BASE[:3], "Python 3.14 is out."]),
    ],
    ids=["lines", "sentences"],
)
def test_c4_too_few_sentences(kept, dropped):
    doc_filter = C4DocFilter(C4Filter(), DATA)
    assert doc_filter(["\n".join(kept), "\n".join(dropped)]).reasons == [None, "too_few_sentences"]


def test_c4_counts_only_kept_documents():
    js = "Please enable JavaScript to continue."
    verdict = C4DocFilter(C4Filter(), DATA)(["\n".join([*BASE, js]), "\n".join([*BASE[:4], js])])
    assert verdict.reasons == [None, "too_few_sentences"]
    assert verdict.counts["line-filter-javascript"] == 1
    assert verdict.counts["line-total"] == 6


# --- FineWeb ---------------------------------------------------------------------------------------


def punct_lines(n_punct: int) -> str:
    """25 lines of prose, the first `n_punct` ending with a period."""
    return "\n".join(line + "." * (i < n_punct) for i, line in enumerate(chunks(25, 5)))


def short_lines(n_short: int) -> str:
    """100 distinct lines, `n_short` of them at most 30 characters."""
    return "\n".join(
        f"Short note number {i}." if i < n_short else f"This is a longer line, number {i}." for i in range(100)
    )


def thanks_twice(length: int) -> str:
    """Distinct prose lines and "Thanks!" twice, `length` characters without the newlines."""
    lines = interleave([line + "." for line in chunks(18, 5)], "Thanks!", 2)
    return pad("\n".join(lines), length + len(lines) - 1)


LIST_LINES = [  # 10 words (the periods are words), 3 newlines
    "Internationalization considerations.",
    "Incomprehensibilities notwithstanding.",
    "Counterrevolutionaries everywhere.",
    "Indubitably",
]

FINEWEB = [
    # rule, kept, dropped, reason
    ("line_punct_ratio", punct_lines(3), punct_lines(2), "line_punct_ratio"),  # 3/25 = 0.12, then 0.08
    ("short_line_ratio", short_lines(67), short_lines(68), "short_line_ratio"),  # 0.67, then 0.68
    # the second "Thanks!": 7 of 700 characters (0.01), then of 699
    ("char_dup_ratio", thanks_twice(700), thanks_twice(699), "char_dup_ratio"),
    # newlines per word: 3/10, then a blank line: 4/10
    ("list_ratio", "\n".join(LIST_LINES), "\n".join(LIST_LINES).replace("\n", "\n\n", 1), "list_ratio"),
]


@pytest.mark.parametrize(("kept", "dropped", "why"), [c[1:] for c in FINEWEB], ids=[c[0] for c in FINEWEB])
def test_fineweb(kept, dropped, why):
    doc_filter = FineWebDocFilter(FineWebFilter(), DATA)
    assert doc_filter([kept, dropped]).reasons == [None, why]


# --- Shared: word splitter, registry, chain --------------------------------------------------------


def test_fast_word_tokenizer_splits_like_spacy():
    tokenizer = words.word_tokenizer("fast")
    text = "Don't visit https://example.com/a?b=1). It's 3.14, e.g. mail a.b@c.org... ok!! ----"
    assert tokenizer.word_tokenize(text) == [
        *["Do", "n't", "visit", "https://example.com/a?b=1", ")", ".", "It", "'s", "3.14", ","],
        *["e", ".", "g", ".", "mail", "a.b@c.org", "...", "ok", "!", "!", "----"],
    ]
    assert tokenizer.sent_tokenize("Version 3.14 is out. See the docs!\nNo period here\nDone.") == [
        "Version 3.14 is out.",
        "See the docs!",
        "No period here",
        "Done.",
    ]


def test_one_tokenizer_for_all_filters():
    built = [
        cls(spec, DATA)
        for cls, spec in [
            (GopherQualityDocFilter, GopherQualityFilter()),
            (GopherRepetitionDocFilter, GopherRepetitionFilter()),
            (C4DocFilter, C4Filter()),
            (FineWebDocFilter, FineWebFilter()),
        ]
    ]
    assert all(f.step.language is words.word_tokenizer("fast") for f in built)


def test_spacy_missing_is_a_user_error(monkeypatch):
    monkeypatch.setattr(words.importlib.util, "find_spec", lambda name: None)
    words.word_tokenizer.cache_clear()
    with pytest.raises(UserError, match="pip install spacy"):
        GopherQualityDocFilter(GopherQualityFilter(), DataConfig(word_tokenizer="spacy"))
    words.word_tokenizer.cache_clear()


def test_registry_and_chain():
    assert [filter_class(kind) for kind in ("gopher_quality", "gopher_repetition", "c4", "fineweb")] == [
        GopherQualityDocFilter,
        GopherRepetitionDocFilter,
        C4DocFilter,
        FineWebDocFilter,
    ]
    data = DataConfig(
        sources=[SourceConfig(kind="jsonl", uri="x.jsonl")],  # web content: all four apply
        filters=[GopherQualityFilter(), GopherRepetitionFilter(), C4Filter(), FineWebFilter()],
    )
    good = "\n".join(BASE + [prose(10, 20) + ".", prose(10, 30) + ".", "Read more"])
    table = pa.table(
        {
            "text": [good, prose(10), "\n".join([*BASE[1:3], BASE[4], prose(45, 40) + "."])],
            "reject": pa.array([None, None, None], pa.string()),
            "source_index": pa.array([0, 0, 0], pa.int32()),
        }
    )
    out = FilterChain(data).apply(table)
    assert out["reject"].to_pylist() == [None, "gopher_quality/gopher_short_doc", "c4/too_few_sentences"]
    assert out["text"][0].as_py() == good.removesuffix("\nRead more")


def test_spacy_tokenizer_when_installed():
    pytest.importorskip("spacy")
    words.word_tokenizer.cache_clear()
    try:
        doc_filter = GopherQualityDocFilter(GopherQualityFilter(), DataConfig(word_tokenizer="spacy"))
        assert doc_filter.step.language.word_tokenize("Don't stop.") == ["Do", "n't", "stop", "."]
        assert doc_filter([prose(50), prose(49)]).reasons == [None, "gopher_short_doc"]
    finally:
        words.word_tokenizer.cache_clear()
