"""MinHash signatures of many documents at once, with numpy over every word and shingle of a batch.

Scheme `SCHEME` (recorded with every published dedup index: signatures of different schemes are
not comparable):
- words: maximal `\\w+` runs of the lower-cased text, as UTF-8 bytes; shingles: `size`
  consecutive words (a document of at most `size` words is one shingle). `steps.shingles` is
  the one-document reference definition;
- word hash: `fmix64(sum_i (byte_i + 1) * P^i mod 2^64)`; shingle hash: the upper 32 bits of
  `fmix64(sum_j word_hash_j * Q^j mod 2^64)` (`fmix64`: murmur3's 64-bit finalizer). Both sums
  are differences of two entries of one prefix-sum array (over the batch's bytes, then over its
  words), so there is no Python loop per word or per shingle;
- permutations: `h * a + b mod 2^32` with the parameters of datasketch's `affine32` scheme
  (`seed=1`), drawn here the same way (importing datasketch costs each Ray worker scipy); the
  signature is the minimum per permutation over the document's shingles.
`LEGACY_SCHEME` (SHA-1 per shingle, datasketch-identical) is what dedup indexes without a
recorded scheme were built with.

ASCII texts are classified and lower-cased with byte lookup tables; other texts go through
Python's `str.lower` and a `\\W+` substitution, so words keep Python's Unicode `\\w` meaning.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

SCHEME = "minhash-poly64-affine32-v2"
LEGACY_SCHEME = "minhash-sha1-affine32-v1"

_NON_WORD = re.compile(r"\W+", re.UNICODE)
_P, _Q = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F  # odd, so invertible mod 2^64
_P_INV, _Q_INV = pow(_P, -1, 1 << 64), pow(_Q, -1, 1 << 64)
_GROUP_BYTES = 1 << 21  # text bytes of the documents hashed at once (a few uint64 arrays of this size)
_PERM_CHUNK = 1 << 13  # shingles permuted at once: num_perm x 8k uint32 (4 MiB at 128)

_codes = np.arange(256)
_LOWER = np.where((_codes >= 65) & (_codes <= 90), _codes + 32, _codes).astype(np.uint8)
# A word byte: ASCII [0-9A-Za-z_] or any byte of a multi-byte UTF-8 character (non-ASCII texts
# reach the tables with every non-word run already replaced by one space).
_WORD_BYTE = np.array([chr(c).isalnum() or c == 95 or c >= 128 for c in range(256)])


@lru_cache(maxsize=8)
def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.RandomState(1)  # datasketch MinHash(seed=1, scheme="affine32")
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


@lru_cache(maxsize=8)
def _powers(n: int, base: int) -> np.ndarray:
    out = np.full(n, base, np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)  # wraps mod 2^64


def _powers_upto(n: int, base: int) -> np.ndarray:
    return _powers(max(1 << 16, 1 << max(0, n - 1).bit_length()), base)[:n]  # few sizes: cache hits


def _fmix64(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _poly_spans(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, base: int, inverse: int) -> np.ndarray:
    """`sum_{i<end-start} values[start+i] * base^i mod 2^64` for every span (values: uint64)."""
    prefix = np.zeros(len(values) + 1, np.uint64)
    np.cumsum(values * _powers_upto(len(values), base), out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * _powers_upto(len(values) + 1, inverse)[starts]


def word_bytes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The texts as one UTF-8 byte array and per-text byte offsets (len(texts) + 1); non-ASCII
    texts lower-cased with their non-word runs replaced by one space (see the module docstring)."""
    parts = [t.encode() if t.isascii() else _NON_WORD.sub(" ", t.lower()).encode() for t in texts]
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, parts), np.int64, len(parts)), out=offsets[1:])
    return np.frombuffer(b"".join(parts), np.uint8), offsets


def word_hashes(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start byte, 64-bit hash) of every word (maximal run of word bytes of the lower-cased text,
    never across two documents) of the documents `data[offsets[d]:offsets[d + 1]]`."""
    data = _LOWER[data]
    word = _WORD_BYTE[data]
    before = np.zeros(len(data), bool)  # byte j-1 is a word byte of the same document
    before[1:] = word[:-1]
    after = np.zeros(len(data), bool)  # byte j+1 is a word byte of the same document
    after[:-1] = word[1:]
    before[offsets[:-1][offsets[:-1] < len(data)]] = False
    after[offsets[1:][offsets[1:] > 0] - 1] = False
    starts = np.flatnonzero(word & ~before)
    ends = np.flatnonzero(word & ~after) + 1
    return starts, _fmix64(_poly_spans(data.astype(np.uint64) + np.uint64(1), starts, ends, _P, _P_INV))


def shingle_hashes(data: np.ndarray, offsets: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 hash of every shingle, shingles per document >= 1) of the documents
    `data[offsets[d]:offsets[d + 1]]` (as from `word_bytes`, offsets starting at 0)."""
    starts, words = word_hashes(data, offsets)
    first_word = np.searchsorted(starts, offsets[:-1])  # each document's first word
    n_words = np.diff(np.searchsorted(starts, offsets))
    counts = np.maximum(n_words - size + 1, 1)
    doc = np.repeat(np.arange(len(counts)), counts)
    first = first_word[doc] + np.arange(len(doc)) - np.repeat(np.cumsum(counts) - counts, counts)
    stop = np.minimum(first + size, first_word[doc] + n_words[doc])  # == first for a wordless document
    shingles = _fmix64(_poly_spans(words, first, stop, _Q, _Q_INV))
    return (shingles >> np.uint64(32)).astype(np.uint32), counts


def _min_permuted(hashes: np.ndarray, counts: np.ndarray, num_perm: int) -> np.ndarray:
    """(documents, num_perm) minimum of `h * a + b` over each document's shingle hashes."""
    a, b = permutations(num_perm)
    doc_starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=doc_starts[1:])
    out = np.empty((len(counts), num_perm), np.uint32)
    first = 0
    while first < len(counts):  # whole documents per chunk, so each reduceat sees complete documents
        last = max(int(np.searchsorted(doc_starts, doc_starts[first] + _PERM_CHUNK, side="left")), first + 1)
        lo, hi = doc_starts[first], doc_starts[last] if last < len(counts) else len(hashes)
        # Permutations along rows: reduceat then runs over contiguous memory (10x faster than columns).
        permuted = np.multiply(a[:, None], hashes[None, lo:hi])
        permuted += b[:, None]
        out[first:last] = np.minimum.reduceat(permuted, doc_starts[first:last] - lo, axis=1).T
        first = last
    return out


def batch_signatures(texts: list[str], num_perm: int, size: int) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' word `size`-shingles."""
    data, offsets = word_bytes(texts)
    out = np.empty((len(texts), num_perm), np.uint32)
    first = 0
    while first < len(texts):  # groups of whole documents of about _GROUP_BYTES
        last = max(int(np.searchsorted(offsets, offsets[first] + _GROUP_BYTES, side="right")) - 1, first + 1)
        lo, hi = offsets[first], offsets[last]
        hashes, counts = shingle_hashes(data[lo:hi], offsets[first : last + 1] - lo, size)
        out[first:last] = _min_permuted(hashes, counts, num_perm)
        first = last
    return out
