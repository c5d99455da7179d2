"""Word n-gram hashes of many texts at once, and the n-gram index decontamination looks them up in.

Words are those of `minhash.py` (maximal `\\w+` runs of the lower-cased text, so case and
punctuation do not matter) with the same word hash; an n-gram's hash is the full 64 bits of
`fmix64(sum_j word_hash_j * Q^j mod 2^64)` over `n` consecutive words of one text. Unlike a MinHash
shingle, a text of fewer than `n` words has no n-gram: a short answer matches nothing.

64 bits because the index is looked up with every n-gram of the corpus: with 2^25 indexed hashes
and 2^38 looked up (about a terabyte of text), about 2^-1 false matches are expected in all.

Everything is numpy over a group of texts of about `GROUP_BYTES` (one byte array and its prefix
sums, as in `minhash.shingle_hashes`): no Python loop per word or per n-gram.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .minhash import _Q, _Q_INV, _fmix64, _poly_spans, word_bytes, word_hashes

GROUP_BYTES = 1 << 21  # text bytes hashed at once: a few uint64 arrays of this many entries
FULL = 1 << 64  # a sampling threshold that keeps every hash


def _group_ngrams(data: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of every n-gram, n-grams per text) of the texts `data[offsets[d]:offsets[d+1]]`
    (as from `minhash.word_bytes`, offsets starting at 0)."""
    starts, words = word_hashes(data, offsets)
    first_word = np.searchsorted(starts, offsets[:-1])
    counts = np.maximum(np.diff(np.searchsorted(starts, offsets)) - n + 1, 0)
    doc = np.repeat(np.arange(len(counts)), counts)
    first = first_word[doc] + np.arange(len(doc)) - np.repeat(np.cumsum(counts) - counts, counts)
    return _fmix64(_poly_spans(words, first, first + n, _Q, _Q_INV)), counts


def iter_ngrams(texts: list[str], n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(n-gram hashes, the index in `texts` of each one's text), a group of whole texts of about
    `GROUP_BYTES` at a time (a longer text is a group of its own)."""
    data, offsets = word_bytes(texts)
    first = 0
    while first < len(texts):
        last = max(int(np.searchsorted(offsets, offsets[first] + GROUP_BYTES, side="right")) - 1, first + 1)
        lo = offsets[first]
        hashes, counts = _group_ngrams(data[lo : offsets[last]], offsets[first : last + 1] - lo, n)
        yield hashes, np.repeat(np.arange(first, last), counts)
        first = last


def distinct_ngrams(texts: list[str], n: int) -> np.ndarray:
    """The sorted distinct n-gram hashes of `texts` (uint64)."""
    parts = [sorted_distinct(hashes) for hashes, _ in iter_ngrams(texts, n)]
    return sorted_distinct(np.concatenate(parts), runs=True) if parts else np.zeros(0, np.uint64)


def sorted_distinct(values: np.ndarray, runs: bool = False) -> np.ndarray:
    """`np.unique` by sorting: numpy 2's hash-table `unique` is ~6x slower on 64-bit hashes. `runs`:
    `values` are sorted runs end to end (the stable sort merges them 4x faster than quicksort)."""
    values = np.sort(values, kind="stable" if runs else "quicksort")
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def sample_threshold(total: int, limit: int) -> int:
    """The hash threshold keeping about `limit` of `total` distinct hashes (FULL: all of them).
    Hashes are uniform, so `hash < threshold` is a sample of rate `limit / total` that every task
    and every later lookup agrees on without exchanging anything."""
    return FULL if total <= limit else (FULL // max(total, 1)) * max(limit, 0)


def below(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """The hashes under `threshold` (of a sorted array: its prefix)."""
    if threshold >= FULL:
        return hashes
    return hashes[: int(np.searchsorted(hashes, np.uint64(threshold)))]


@dataclass(frozen=True)
class NgramIndex:
    """Sorted distinct n-gram hashes with, for each, the task it came from (the smallest task id
    among the tasks that hold it); `names[task id]` names the task. Stored once in the Ray object
    store for a round of tasks: numpy arrays there are read in place, not copied per task."""

    hashes: np.ndarray  # uint64, sorted, distinct
    tasks: np.ndarray  # int32, parallel to `hashes`
    names: tuple[str, ...]
    n: int

    @staticmethod
    def build(parts: list[tuple[int, np.ndarray]], names: tuple[str, ...], n: int) -> NgramIndex:
        """The index of `parts`, each (task id, its sorted distinct hashes)."""
        if not parts:
            return NgramIndex(np.zeros(0, np.uint64), np.zeros(0, np.int32), names, n)
        hashes = sorted_distinct(np.concatenate([h for _, h in parts]).astype(np.uint64, copy=False), runs=True)
        tasks = np.zeros(len(hashes), np.int32)
        # Largest task id first, so that a hash several tasks hold ends with the smallest.
        for task, part in sorted(parts, key=lambda p: -p[0]):
            tasks[np.searchsorted(hashes, part)] = task
        return NgramIndex(hashes, tasks, names, n)

    def __len__(self) -> int:
        return len(self.hashes)

    def hits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(text index, index position) of every n-gram of `texts` found in the index, each pair once."""
        docs, positions = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        if not len(self.hashes):
            return docs[0], positions[0]
        for hashes, doc in iter_ngrams(texts, self.n):
            # Sorted lookups walk the index forwards (numpy's search starts from the previous
            # answer): 8x faster than lookups in text order, which miss the cache on every step.
            order = np.argsort(hashes)
            hashes, doc = hashes[order], doc[order]
            at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
            hit = self.hashes[at] == hashes
            docs.append(doc[hit].astype(np.int64))
            positions.append(at[hit].astype(np.int64))
        doc, position = np.concatenate(docs), np.concatenate(positions)
        pairs = sorted_distinct((doc.astype(np.uint64) << np.uint64(32)) | position.astype(np.uint64))
        return (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)

    def match(self, texts: list[str]) -> np.ndarray:
        """Per text, the smallest task id among its n-grams' matches, -1 when none matches."""
        best = np.full(len(texts), np.iinfo(np.int32).max, np.int32)
        doc, position = self.hits(texts)
        np.minimum.at(best, doc, self.tasks[position])
        return np.where(best == np.iinfo(np.int32).max, -1, best)

    def without(self, positions: np.ndarray) -> NgramIndex:
        """The index less the entries at `positions`."""
        keep = np.ones(len(self.hashes), bool)
        keep[positions] = False
        return NgramIndex(self.hashes[keep], self.tasks[keep], self.names, self.n)
