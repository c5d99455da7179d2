"""datatrove's Gopher quality and repetition rules, re-implemented over numpy arrays.

`gopher_quality(step, text)` and `gopher_repetition(step, text)` return exactly what
`step.filter(Document(text))` returns for datatrove 0.10.1's `GopherQualityFilter` and
`GopherRepetitionFilter` (`step` carries the settings): the same `True` or `(False, reason)` for
every text, the rules in the same order with the same early returns, a `ZeroDivisionError` where
datatrove raises one. The `_batch` forms do a list of texts at once (where datatrove would raise,
the result is the exception instance). Why: datatrove does per-word and per-n-gram Python work (an
`any()` generator per word, one joined string per n-gram for each n from 2 to 10): measured on one
core, about 2 (repetition) and 4 (quality) MB/s with the splitting, the slowest steps of the
filter chain. Here the per-word work is array work over the words of many texts end to end (numpy
calls cost microseconds each: per text, they would cost more than datatrove on texts of a few
hundred words); n-grams never cross a text's end and every count is per text. Measured on one
core with the words given (the splitter's memo), 5 MB of stdlib .py files / of packages' METADATA
and licenses with the stdlib's .txt and .rst: repetition 7.9 / 8.5 MB/s (datatrove 2.9 / 2.5),
quality 44 / 36 MB/s (6.8 / 6.8); on 1-3 kB texts, repetition 4-5x and quality 5-6x datatrove's.

How each quantity stays exact, so that every float comparison sees datatrove's very numbers:
- Counts and character totals are integers and every ratio is the same Python `int / int`
  datatrove computes. Mean word length: datatrove's `np.mean` of integer lengths is an exact
  float64 sum (integers below 2**53) divided once, i.e. `sum / count`; an empty mean is NaN
  (datatrove: NaN and a RuntimeWarning), which fails both bounds.
- Per-word character classes (a character not in `PUNCTUATION_SET`, an alphabetic one) come from
  tables over all code points, counted per word by a cumulative sum over the concatenated words'
  code points (UTF-32, one per `len()` unit): an empty word counts zero, like `any([])`.
- Top n-grams (datatrove: words joined with " ", `Counter.most_common(1)`, whose ties go to the
  first-inserted n-gram): exact integer ids of word tuples by relabeling (`np.unique` of
  `id(n-1 words) * n_words + id(last word)`, only where both (n-1)-word tuples repeat), the largest
  count, ties to the smallest first position; its string is the words' lengths plus n - 1 spaces.
  Tuples and " "-joined strings are the same classes unless a word holds a space (spaCy's
  whitespace tokens can): such a text takes datatrove's own functions.
- Duplicated n-grams (datatrove: `find_all_duplicate`, words joined with "" so ["ab", "c"] equals
  ["a", "bc"], a greedy scan that jumps n words past a repeat without recording the skipped ones):
  a polynomial hash of each n-gram's characters (mod 2**64: a function of the string, equal
  strings have equal hashes) finds the n-grams that can repeat at all; within a hash group the word
  tuples are compared, and a group with unequal tuples (a concatenation or hash collision) is
  split by comparing the strings themselves. So a hash collision only costs time, never a result.
  An n-gram whose string occurs once is never counted and never changes the scan; without
  candidates within n of a repeat the scan is the plain count of later occurrences, otherwise it
  is run over that text's candidates, jumping from repeat to repeat (`_Scan`).
- Paragraph and line duplicates: datatrove's `find_duplicates` counts every occurrence after the
  first: `len(x) - len(set(x))`, and the same for characters.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import NamedTuple

import numpy as np
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    GopherRepetitionFilter,
    find_all_duplicate,
    find_top_duplicate,
    get_n_grams,
)
from datatrove.utils.text import PUNCTUATION_SET, split_into_words
from numpy.lib.stride_tricks import sliding_window_view

Result = bool | tuple[bool, str]
Outcome = Result | ZeroDivisionError  # per text of a batch: datatrove's result or its error

_CODE_POINTS = 0x110000
# Texts are done in groups of about this many words: numpy's per-call cost spread over many
# texts, the arrays (and the hash buckets, 8 bytes x 4-8 per word) still cache-sized.
_CHUNK_WORDS = 1 << 16
# Odd (invertible mod 2**64) hash base; multipliers mixing a span's length and its text into keys.
_BASE = 0x9E3779B97F4A7C15
_LENGTH_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_TEXT_MIX = np.uint64(0x165667B19E3779F9)


@cache
def _non_punctuation() -> np.ndarray:
    """Per code point: True for a character not in datatrove's PUNCTUATION_SET."""
    table = np.ones(_CODE_POINTS, dtype=bool)
    table[[ord(ch) for ch in PUNCTUATION_SET if len(ch) == 1]] = False
    return table


@cache
def _alphabetic() -> np.ndarray:
    """Per code point: `str.isalpha` (built once, ~70 ms)."""
    return np.fromiter(map(str.isalpha, map(chr, range(_CODE_POINTS))), dtype=bool, count=_CODE_POINTS)


def _powers_of(base: int, size: int) -> np.ndarray:
    """base**i mod 2**64 for i < size (uint64 arithmetic wraps mod 2**64)."""
    powers = np.full(size, base, dtype=np.uint64)
    powers[0] = 1
    return np.multiply.accumulate(powers, out=powers)


# Kept for batches up to this many code points (a longer text gets its own, 16 bytes a character).
_CACHED_POWERS = 1 << 21
_powers = np.ones(0, dtype=np.uint64)
_inverse_powers = np.ones(0, dtype=np.uint64)


def _hash_powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """_BASE**i and _BASE**-i mod 2**64 for i < size (at least)."""
    global _powers, _inverse_powers
    if size > _CACHED_POWERS:
        return _powers_of(_BASE, size), _powers_of(pow(_BASE, -1, 1 << 64), size)
    if len(_powers) < size:
        size = min(max(size, 2 * len(_powers), 1 << 16), _CACHED_POWERS)
        _powers, _inverse_powers = _powers_of(_BASE, size), _powers_of(pow(_BASE, -1, 1 << 64), size)
    return _powers, _inverse_powers


class _Tuples(NamedTuple):
    """The n-word tuples of a batch, by start position (all words; False/undefined past a text's end)."""

    repeated: np.ndarray  # whether the tuple at each position occurs again in its text
    ids: np.ndarray  # exact ids where repeated (equal ids: equal tuples, one text)
    counts: np.ndarray  # per id: occurrences
    firsts: np.ndarray  # per id: first position


class _Batch:
    """The words of several texts end to end, as arrays, each computed when first needed."""

    def __init__(self, word_lists: Sequence[list[str]]) -> None:
        self.word_lists = word_lists
        sizes = np.fromiter(map(len, word_lists), dtype=np.int64, count=len(word_lists))
        self.bounds = np.zeros(len(word_lists) + 1, dtype=np.int64)  # text t: words bounds[t]:bounds[t+1]
        np.cumsum(sizes, out=self.bounds[1:])
        self.words = list(itertools.chain.from_iterable(word_lists))
        self.n = len(self.words)
        self.text_of = np.repeat(np.arange(len(word_lists)), sizes)  # per word: its text
        self.left = self.bounds[1:][self.text_of] - np.arange(self.n)  # words from here to the text's end
        self.lengths = np.fromiter(map(len, self.words), dtype=np.int64, count=self.n)
        self.offsets = np.zeros(self.n + 1, dtype=np.int64)  # word i: code points offsets[i]:offsets[i+1]
        np.cumsum(self.lengths, out=self.offsets[1:])
        self.joined = "".join(self.words)
        self._code_points: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._tuples: dict[int, _Tuples] = {}
        self._word_hashes: tuple[np.ndarray, ...] | None = None
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    @property
    def code_points(self) -> np.ndarray:
        if self._code_points is None:
            # surrogatepass: a str may hold lone surrogates (one code point each, like len()).
            data = self.joined.encode("utf-32-le", "surrogatepass")
            self._code_points = np.frombuffer(data, dtype=np.uint32)
        return self._code_points

    def per_text(self, per_word: np.ndarray) -> np.ndarray:
        """Per text: the sum of a per-word array."""
        sums = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(per_word, out=sums[1:])
        return sums[self.bounds[1:]] - sums[self.bounds[:-1]]

    def any_in(self, table: np.ndarray) -> np.ndarray:
        """Per word: whether one of its characters is True in `table` (`any(...)`)."""
        counts = np.zeros(len(self.code_points) + 1, dtype=np.int64)
        np.cumsum(table[self.code_points], out=counts[1:])
        return counts[self.offsets[1:]] > counts[self.offsets[:-1]]

    def non_symbol_words(self) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the words with a character not in PUNCTUATION_SET, and their characters."""
        if ("symbols", 0) not in self._cache:
            non_symbol = self.any_in(_non_punctuation())
            self._cache["symbols", 0] = self.per_text(non_symbol)
            self._cache["symbols", 1] = self.per_text(np.where(non_symbol, self.lengths, 0))
        return self._cache["symbols", 0], self._cache["symbols", 1]

    def alphabetic_words(self) -> np.ndarray:
        """Per text: the words with an alphabetic character."""
        if ("alpha", 0) not in self._cache:
            self._cache["alpha", 0] = self.per_text(self.any_in(_alphabetic()))
        return self._cache["alpha", 0]

    def texts_with_space(self) -> np.ndarray:
        """Per text: whether one of its words holds a " "."""
        if ("space", 0) not in self._cache:
            if " " in self.joined:
                spaces = np.zeros(len(self.code_points) + 1, dtype=np.int64)
                np.cumsum(self.code_points == ord(" "), out=spaces[1:])
                chars = self.offsets[self.bounds]  # text t: code points chars[t]:chars[t+1]
                self._cache["space", 0] = spaces[chars[1:]] > spaces[chars[:-1]]
            else:
                self._cache["space", 0] = np.zeros(len(self.word_lists), dtype=bool)
        return self._cache["space", 0]

    @property
    def ids(self) -> np.ndarray:
        """Per word: the position of its first occurrence in its text (an exact id of the string
        and the text)."""
        if self._ids is None:
            per_text = map(
                lambda words, start: map({}.setdefault, words, itertools.count(start)),
                self.word_lists,
                self.bounds[:-1].tolist(),
            )
            self._ids = np.fromiter(itertools.chain.from_iterable(per_text), np.int64, self.n)
        return self._ids

    def tuples(self, n: int) -> _Tuples:
        """The n-word tuples that occur more than once in their text, with exact ids (n >= 1)."""
        if n not in self._tuples:
            self._tuples[n] = self._words() if n == 1 else self._longer(self.tuples(n - 1), n)
        return self._tuples[n]

    def _words(self) -> _Tuples:
        # Word ids are first positions: counted by id, no sorting.
        counts = np.bincount(self.ids, minlength=self.n)
        return _Tuples(counts[self.ids] >= 2, self.ids, counts, np.arange(self.n))

    def _longer(self, shorter: _Tuples, n: int) -> _Tuples:
        # A tuple can repeat only if both its (n-1)-tuples do: only those are relabeled, by the
        # exact key (id of the first n-1 words, id of the last word; both are per text).
        may = np.flatnonzero(shorter.repeated[:-1] & shorter.repeated[1:] & (self.left[:-1] >= n))
        keys = shorter.ids[may] * self.n + self.ids[may + n - 1]
        _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        ids = np.zeros(self.n, dtype=np.int64)
        ids[may] = inverse
        repeated = np.zeros(self.n, dtype=bool)
        repeated[may] = counts[inverse] >= 2
        return _Tuples(repeated, ids, counts, may[first])

    def top_n_gram_chars(self, n: int) -> np.ndarray:
        """Per text of at least n words: `find_top_duplicate(get_n_grams(words, n))` (n >= 1) if no
        word holds a space."""
        if ("top", n) not in self._cache:
            n_texts = len(self.word_lists)
            tuples = self.tuples(n)
            count = np.ones(n_texts, dtype=np.int64)  # all distinct: Counter's first-inserted, the first
            start = self.bounds[:-1].copy()
            repeated = np.flatnonzero(tuples.counts >= 2)
            if len(repeated):
                counts, firsts = tuples.counts[repeated], tuples.firsts[repeated]
                texts = self.text_of[firsts]
                # Per text the largest count; Counter's ties: the first-inserted, the smallest first.
                order = np.lexsort((firsts, -counts, texts))
                heads = order[np.concatenate(([True], texts[order][1:] != texts[order][:-1]))]
                count[texts[heads]], start[texts[heads]] = counts[heads], firsts[heads]
            end = np.minimum(start + n, self.n)  # a text shorter than n has no n-grams (unused)
            chars = self.offsets[end] - self.offsets[start] + n - 1  # with the " " separators
            self._cache["top", n] = chars * count
        return self._cache["top", n]

    def duplicated_n_gram_chars(self, n: int) -> np.ndarray:
        """Per text: `find_all_duplicate(words, n)` (n >= 1)."""
        if ("dup", n) in self._cache:
            return self._cache["dup", n]
        result = np.zeros(len(self.word_lists), dtype=np.int64)
        self._cache["dup", n] = result
        n_grams = self.n - n + 1  # by start position, crossing a text's end or not
        if n_grams < 2:
            return result
        keys = self._span_hashes(n)
        # A key alone in its bucket (top bits; 4-8 buckets per n-gram) is a string that occurs
        # once in its text: it never counts and never changes the scan. Only the others are sorted.
        # The n-grams that cross a text's end go to an extra bucket, never looked at.
        bits = max(n_grams.bit_length() + 2, 6)
        buckets = (keys >> np.uint64(64 - bits)).astype(np.intp)
        buckets[self.left[:n_grams] < n] = 1 << bits
        counts = np.bincount(buckets, minlength=(1 << bits) + 1)
        counts[1 << bits] = 0
        maybe = np.flatnonzero(counts[buckets] >= 2)
        if len(maybe) < 2:
            return result
        keys = keys[maybe]
        order = np.argsort(keys, kind="stable")  # stable: positions ascend within a group
        positions, keys = maybe[order], keys[order]
        same = keys[1:] == keys[:-1]
        if not same.any():
            return result
        shared = np.zeros(len(keys), dtype=bool)
        shared[1:] |= same
        shared[:-1] |= same
        later = np.concatenate(([False], same))[shared]  # not its group's first (lowest) position
        positions = positions[shared]
        group = np.cumsum(~later) - 1
        # Equal word tuples are equal strings of one text (word ids are per text): each later member
        # against its group's first.
        windows = sliding_window_view(self.ids, n)
        unequal = (windows[positions[later]] != windows[positions[~later][group[later]]]).any(axis=1)
        classes = group
        if unequal.any():
            # A concatenation or hash collision: those groups are split by the strings themselves.
            doubtful = np.isin(group, group[later][unequal])
            by_string: dict[tuple[int, str], int] = {}
            base = int(group[-1]) + 1
            joined, offsets, text_of = self.joined, self.offsets, self.text_of
            classes = group.copy()
            classes[doubtful] = [
                by_string.setdefault((text_of[p], joined[offsets[p] : offsets[p + n]]), base + len(by_string))
                for p in positions[doubtful].tolist()
            ]
            regroup = np.argsort(classes, kind="stable")  # positions still ascend within a class
            positions, classes = positions[regroup], classes[regroup]
            later = np.concatenate(([False], classes[1:] == classes[:-1]))
        # Classes are contiguous here: the next occurrence of a class is the next element.
        follows = np.flatnonzero(later[1:])
        by_position = np.argsort(positions)
        rank = np.empty(len(positions), dtype=np.intp)
        rank[by_position] = np.arange(len(positions))
        positions, later = positions[by_position], later[by_position]
        texts = self.text_of[positions]
        chars = self.offsets[positions + n] - self.offsets[positions]
        # Without skips, each string's first occurrence is recorded and every later one repeats
        # (weights: float64, exact for these integer sums).
        result += np.bincount(texts[later], weights=chars[later], minlength=len(result)).astype(np.int64)
        # The greedy scan agrees unless a candidate falls within the n - 1 n-grams a repeat skips:
        # those texts are scanned over their candidates.
        conflicts = later[:-1] & (np.diff(positions) < n) & (texts[1:] == texts[:-1])
        if conflicts.any():
            following = np.full(len(positions), len(positions), dtype=np.int64)
            following[rank[follows]] = rank[follows + 1]
            scan = _Scan(positions, following, later, chars, n)
            for text in np.unique(texts[:-1][conflicts]).tolist():
                lo, hi = np.searchsorted(texts, [text, text + 1])
                result[text] = scan.run(int(lo), int(hi))
        return result

    def _span_hashes(self, n: int) -> np.ndarray:
        """A uint64 key per n-gram (by start position), a function of its string ("".join) and
        its text; the n-grams that cross a text's end are garbage."""
        if self._word_hashes is None:
            size = len(self.code_points)
            powers, inverse_powers = _hash_powers(size + 1)
            prefix = np.zeros(size + 1, dtype=np.uint64)
            np.cumsum(self.code_points.astype(np.uint64) * powers[:size], out=prefix[1:])
            self._word_hashes = (
                prefix[self.offsets],
                inverse_powers[self.offsets[:-1]],
                self.offsets.astype(np.uint64),
                self.text_of.astype(np.uint64) * _TEXT_MIX,
            )
        prefix, inverse_powers, offsets, texts = self._word_hashes
        n_grams = self.n - n + 1
        # sum(c[s + k] * B**k) = (prefix[e] - prefix[s]) * B**-s, the same wherever the span lies.
        hashes = (prefix[n:] - prefix[:n_grams]) * inverse_powers[:n_grams]
        hashes += (offsets[n:] - offsets[:n_grams]) * _LENGTH_MIX
        hashes += texts[:n_grams]
        return hashes


class _Scan:
    """`find_all_duplicate`'s greedy scan over the candidates (ascending positions, one or more
    texts; classes: exact strings of one text), by jumps from repeat to repeat.

    The scan visits n-grams in order; a visited one whose string was recorded before is a repeat
    (counted; the next n - 1 are skipped), else it is recorded. A class's first occurrence is
    recorded when visited, so a visited candidate is a repeat unless it is the first occurrence or
    every earlier occurrence was skipped: after a repeat, each skipped first occurrence hands that
    role on to its class's next occurrence past the skip (`pending`, a heap: smallest first). So
    the scan steps from repeat to repeat, over the first occurrences in between (recorded, no
    skip), in about candidates / n steps instead of one per candidate.
    """

    def __init__(
        self, positions: np.ndarray, following: np.ndarray, later: np.ndarray, chars: np.ndarray, n: int
    ) -> None:
        # `following`: per candidate, its class's next occurrence (len(positions) if none). The
        # loop reads few elements: memoryviews of the arrays, not lists (converting costs more).
        size = len(positions)
        index = np.arange(size + 1)
        later = np.append(later, True)
        first = ~later
        first[-1] = True
        self.following = memoryview(following)
        # from each index: the next later occurrence, the next first occurrence (size if none)
        self.next_later = memoryview(np.minimum.accumulate(np.where(later, index, size)[::-1])[::-1].copy())
        self.next_first = memoryview(np.minimum.accumulate(np.where(first, index, size)[::-1])[::-1].copy())
        self.skip_to = memoryview(np.searchsorted(positions, positions + n))  # first index past a skip
        self.chars = memoryview(np.ascontiguousarray(chars))

    def run(self, lo: int, hi: int) -> int:
        """The repeated characters of the text whose candidates are lo:hi."""
        following, next_later, next_first, skip_to, chars = (
            self.following,
            self.next_later,
            self.next_first,
            self.skip_to,
            self.chars,
        )
        pending: list[int] = []  # candidates now their class's first to be visited (not first occurrences)
        repeated, i = 0, lo
        while (j := next_later[i]) < hi:  # first occurrences before j: visited and recorded
            if pending and pending[0] == j:  # every earlier occurrence skipped: recorded
                heapq.heappop(pending)
                i = j + 1
                continue
            repeated += chars[j]
            end = min(skip_to[j], hi)
            s = next_first[j + 1]
            while s < end:  # a skipped first occurrence: its role goes to the next one past the skip
                t = following[s]
                while t < end:
                    t = following[t]
                if t < hi:
                    heapq.heappush(pending, t)
                s = next_first[s + 1]
            while pending and pending[0] < end:  # the same for a skipped pending one
                t = following[heapq.heappop(pending)]
                while t < end:
                    t = following[t]
                if t < hi:
                    heapq.heappush(pending, t)
            i = end
        return repeated


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """datatrove's `find_duplicates`: the elements after each one's first occurrence, their chars."""
    distinct = set(parts)
    return len(parts) - len(distinct), sum(map(len, parts)) - sum(map(len, distinct))


def _chunks(word_lists: list[list[str]]) -> list[range]:
    """Consecutive runs of texts of about _CHUNK_WORDS words (a longer text alone)."""
    runs, start, words = [], 0, 0
    for i, text_words in enumerate(word_lists):
        if words and words + len(text_words) > _CHUNK_WORDS:
            runs.append(range(start, i))
            start, words = i, 0
        words += len(text_words)
    if start < len(word_lists):
        runs.append(range(start, len(word_lists)))
    return runs


def _run(word_lists: list[list[str]], decide: Callable[[int, _Batch, int], Result]) -> list[Outcome]:
    """decide(k, batch, i) for the k-th word list, the i-th of its batch; a ZeroDivisionError is
    the result of its text (where datatrove divides by zero words or lines)."""
    results: list[Outcome] = []
    for run in _chunks(word_lists):
        batch = _Batch(word_lists[run.start : run.stop])
        for i, k in enumerate(run):
            try:
                results.append(decide(k, batch, i))
            except ZeroDivisionError as error:
                results.append(error)
    return results


def _quality(step: GopherQualityFilter, text: str, batch: _Batch, i: int) -> Result:
    """datatrove's `GopherQualityFilter.filter`, line for line, on the batch's counts."""
    words = batch.word_lists[i]
    n_words = len(words)
    non_symbol_words, non_symbol_chars = batch.non_symbol_words()
    n_non_symbol_words_words = int(non_symbol_words[i])

    if step.min_doc_words and n_non_symbol_words_words < step.min_doc_words:
        return False, "gopher_short_doc"
    if step.max_doc_words and n_non_symbol_words_words > step.max_doc_words:
        return False, "gopher_long_doc"

    # np.mean of integer lengths is their exact sum divided once; of nothing, NaN (fails both bounds).
    total = int(non_symbol_chars[i])
    avg_n_words = total / n_non_symbol_words_words if n_non_symbol_words_words else math.nan
    if step.min_avg_word_length and avg_n_words < step.min_avg_word_length:
        return False, "gopher_below_avg_threshold"
    if step.max_avg_word_length and avg_n_words > step.max_avg_word_length:
        return False, "gopher_above_avg_threshold"

    if step.max_symbol_word_ratio and text.count("#") / n_words > step.max_symbol_word_ratio:
        return False, "gopher_too_many_hashes"
    if step.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > step.max_symbol_word_ratio:
        return False, "gopher_too_many_ellipsis"

    lines = text.splitlines()
    if step.max_bullet_lines_ratio:
        bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
        if bullets / len(lines) > step.max_bullet_lines_ratio:
            return False, "gopher_too_many_bullets"
    if step.max_ellipsis_lines_ratio:
        ellipses = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
        if ellipses / len(lines) > step.max_ellipsis_lines_ratio:
            return False, "gopher_too_many_end_ellipsis"

    if step.max_non_alpha_words_ratio:
        if int(batch.alphabetic_words()[i]) / n_words < step.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"

    # set.intersection of a list is that of its set, without building it.
    if step.min_stop_words and len(step.stop_words.intersection(words)) < step.min_stop_words:
        return False, "gopher_enough_stop_words"

    return True


def _paragraphs(text: str) -> list[str]:
    """`re.split(r"\\n{2,}", text)` for a text without leading or trailing newlines (3x faster):
    after a split at "\\n\\n", a longer run of newlines leaves empty parts and one "\\n" ahead of
    the next paragraph when odd."""
    parts = text.split("\n\n")
    if len(parts) > 1:
        parts = [parts[0], *(part[1:] if part[0] == "\n" else part for part in parts[1:] if part)]
    return parts


def _lines(text: str) -> list[str]:
    """`re.split("\\n+", text)` (4x faster): the empty parts between newlines go, not the ends."""
    parts = text.split("\n")
    if len(parts) > 2:
        parts = [parts[0], *filter(None, parts[1:-1]), parts[-1]]
    return parts


def _repetition_lines(step: GopherRepetitionFilter, text: str) -> Result | None:
    """datatrove's `GopherRepetitionFilter.filter` up to its splitting into words (None: go on)."""
    if not text:
        return False, "empty"

    paragraphs = _paragraphs(text.strip())
    paragraphs_duplicates, char_duplicates = _duplicates(paragraphs)
    if step.dup_para_frac and paragraphs_duplicates / len(paragraphs) > step.dup_para_frac:
        return False, "dup_para_frac"
    if step.dup_para_char_frac and char_duplicates / len(text) > step.dup_para_char_frac:
        return False, "dup_para_char_frac"

    lines = _lines(text)
    line_duplicates, char_duplicates = _duplicates(lines)
    if step.dup_line_frac and line_duplicates / len(lines) > step.dup_line_frac:
        return False, "dup_line_frac"
    if step.dup_line_char_frac and char_duplicates / len(text) > step.dup_line_char_frac:
        return False, "dup_line_char_frac"
    return None


def _repetition_words(step: GopherRepetitionFilter, text: str, batch: _Batch, i: int) -> Result:
    """The rest of datatrove's `GopherRepetitionFilter.filter`: the n-gram rules."""
    words = batch.word_lists[i]
    for n, n_frac in step.top_n_grams:
        if len(words) - n + 1 <= 0:
            continue  # no n-grams
        if n < 1 or batch.texts_with_space()[i]:
            # Not a real n-gram size, or " "-joined strings that word tuples do not tell apart.
            top_char_length = find_top_duplicate(get_n_grams(words, n))
        else:
            top_char_length = int(batch.top_n_gram_chars(n)[i])
        if top_char_length / len(text) > n_frac:
            return False, f"top_{n}_gram"

    for n, n_frac in step.dup_n_grams:
        if n < 1:  # not a real n-gram size: datatrove's code, whatever it does
            n_duplicates_char = find_all_duplicate(words, n)
        else:
            n_duplicates_char = int(batch.duplicated_n_gram_chars(n)[i])
        if n_duplicates_char / len(text) > n_frac:
            return False, f"duplicated_{n}_n_grams"

    return True


def gopher_quality_batch(step: GopherQualityFilter, texts: Sequence[str]) -> list[Outcome]:
    """`step.filter` of each text; a ZeroDivisionError where datatrove raises one."""
    word_lists = [split_into_words(text, step.language) for text in texts]
    return _run(word_lists, lambda k, batch, i: _quality(step, texts[k], batch, i))


def gopher_repetition_batch(step: GopherRepetitionFilter, texts: Sequence[str]) -> list[Outcome]:
    """`step.filter` of each text."""
    results: list[Outcome | None] = [_repetition_lines(step, text) for text in texts]
    pending = [k for k, result in enumerate(results) if result is None]
    word_lists = [split_into_words(texts[k], step.language) for k in pending]
    decided = _run(word_lists, lambda j, batch, i: _repetition_words(step, texts[pending[j]], batch, i))
    for k, result in zip(pending, decided, strict=True):
        results[k] = result
    return results  # type: ignore[return-value]  # no None left


def _one(outcome: Outcome) -> Result:
    if isinstance(outcome, ZeroDivisionError):
        raise outcome
    return outcome


def gopher_quality(step: GopherQualityFilter, text: str) -> Result:
    """`step.filter(Document(text=text))`: the same result, or the same ZeroDivisionError."""
    return _one(gopher_quality_batch(step, [text])[0])


def gopher_repetition(step: GopherRepetitionFilter, text: str) -> Result:
    """`step.filter(Document(text=text))`: the same result."""
    return _one(gopher_repetition_batch(step, [text])[0])


__all__ = ["gopher_quality", "gopher_quality_batch", "gopher_repetition", "gopher_repetition_batch"]
