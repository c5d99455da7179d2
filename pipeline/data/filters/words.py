"""The word splitter of the quality heuristics (`data.word_tokenizer`), as a datatrove `WordTokenizer`.

datatrove's filters split words with `split_into_words(text, language)`, which takes a
`WordTokenizer` instance in place of a language code. For English it would load spaCy's blank
model: a large dependency (16 packages), and 17x slower than this module's regex. `fast` is a regex
with spaCy's main choices: words are runs of word characters; punctuation is one token per
character, except runs of "-", "~" or "." (an rst underline, an ellipsis); URLs, e-mail addresses
and numbers such as 3.14 stay whole; contractions split as spaCy does (do|n't, it|'s). Sentences
are datatrove's `WhitespaceTokenizer`'s (its regex), except that the terminal punctuation must be
followed by a space or the end: "3.14" and "e.g" end none, as with spaCy's sentencizer (C4 counts
sentences). `spacy` is datatrove's own `SpaCyTokenizer("en")`.

Measured against `spacy` on 628 prose-like files (4.8 MB: packages' METADATA and licenses, the
stdlib's .txt and .rst), the four heuristics, each on every file: 4.8x the throughput (1.09 vs
0.23 MB/s on one core); the same keep/drop for 99.2% (Gopher quality), 96.3% (repetition), 99.7%
(C4), 99.8% (FineWeb) of the files, 99.8% through the four in a row (the same reason: 96.3%).
The plain regex (runs of word characters, runs of other non-space characters) with datatrove's
sentence regex as is agreed less: 96.3%, 88.9%, 97.0%, 99.8%.

One instance per kind per process: datatrove caches tokenizers (`load_word_tokenizer`, unbounded)
and splits (`split_into_parts`) by tokenizer instance, so a new one per chain would only grow them.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache

import regex
from datatrove.utils.word_tokenizers import SpaCyTokenizer, WhitespaceTokenizer, WordTokenizer

from pipeline.errors import UserError

# Tried in order at each position: the whole-token forms spaCy keeps (its URL and e-mail matches,
# numbers with inner separators, contractions), then word runs, then one punctuation character.
_URL = r"(?:https?://|www\.)[^\s<>\"'()\[\]{}`]*[^\s<>\"'()\[\]{}`.,;:!?]"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_NUMBER = r"\d+(?:[.,:]\d+)+"
_NEGATION = r"\w+(?=(?i:n['’]t)\b)|(?i:n['’]t)\b"
_CLITIC = r"['’](?i:s|d|m|re|ve|ll)\b"
_REST = r"\w+|-{2,}|~{2,}|\.{2,}|[^\w\s]"
MEMO_CHARS = 4 << 20  # a read chunk's text (plan.chunk_bytes: at most 4 MB)
_WORDS = re.compile(rf"{_URL}|{_EMAIL}|{_NUMBER}|{_NEGATION}|{_CLITIC}|{_REST}")
# Where the costly alternatives (URL, e-mail, negation) can match: each needs one of these. The
# e-mail and negation forms rescan every word run (the negation one backtracking through it): the
# full pattern is 2.4x slower than the rest of it on the stdlib, and they rarely matter.
# Literal marks found with str.find (a regex alternation scans at half the speed): a superset of
# where those alternatives can match (an e-mail holds "@", a negation "n't" in some case).
_RARE = ("://", "www.", "@", *(n + q + t for n in "nN" for q in "'’" for t in "tT"))
_COMMON = re.compile(rf"{_NUMBER}|{_CLITIC}|{_REST}")


def split_words(text: str) -> list[str]:
    """`_WORDS.findall(text)`, faster: no token spans a newline and `\b` at a line's ends sees what
    it would in the whole text, so the text is tokenized line by line, exactly, with `_WORDS` on the
    lines that hold a mark of `_RARE` and without its costly alternatives elsewhere."""
    marks = {mark: text.find(mark) for mark in _RARE}  # next position of each (-1: no more)
    words: list[str] = []
    done = 0
    while found := [at for at in marks.values() if at >= 0]:
        at = min(found)
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        end = len(text) if end < 0 else end
        words += _COMMON.findall(text, done, start)
        words += _WORDS.findall(text, start, end)
        done = end
        for mark, position in marks.items():  # each mark's scan moves forwards only: O(text) in all
            if 0 <= position < done:
                marks[mark] = text.find(mark, done)
    words += _COMMON.findall(text, done)
    return words


class FastWordTokenizer(WhitespaceTokenizer):
    """Every non-space character is in exactly one word; whitespace is in none."""

    def __init__(self) -> None:
        super().__init__()
        # datatrove's sentence regex, its terminal punctuation then followed by a space or the end
        # (a newline ends a sentence as before).
        self._sent_regex = regex.compile(self._sent_regex.pattern + r"(?:(?<=\n)|(?=\s|$))", regex.UNICODE)
        self._memo: dict[str, list[str]] = {}
        self._memo_chars = 0

    def word_tokenize(self, text: str) -> list[str]:
        # The chain runs each filter over a whole batch, so the filters that split words (Gopher
        # quality and repetition, FineWeb) meet a text once each, a batch apart: a memo of the last
        # few MB of texts splits it once (datatrove's own cache holds 5 texts). Bounded by text
        # size (about 10x that in word strings), cleared whole when full.
        words = self._memo.get(text)
        if words is None:
            if self._memo_chars + len(text) > MEMO_CHARS:
                self._memo.clear()
                self._memo_chars = 0
            words = self._memo[text] = split_words(text)
            self._memo_chars += len(text)
        return words


@cache
def word_tokenizer(kind: str) -> WordTokenizer:
    """The shared tokenizer of `data.word_tokenizer` ("fast" or "spacy")."""
    if kind == "fast":
        return FastWordTokenizer()
    if kind == "spacy":
        if importlib.util.find_spec("spacy") is None:
            raise UserError(
                "data.word_tokenizer is 'spacy' but spaCy is not installed: pip install spacy "
                "(or set data.word_tokenizer: fast)"
            )
        return SpaCyTokenizer("en")
    raise UserError(f"data.word_tokenizer must be 'fast' or 'spacy', not {kind!r}")


__all__ = ["FastWordTokenizer", "word_tokenizer"]
