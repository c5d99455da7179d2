"""MinHash signatures of many documents at once, bit-identical to datasketch's `MinHash`
(`scheme="affine32"`, `seed=1`, SHA-1 32-bit shingle hashes).

datasketch hashes and permutes one document at a time; here the shingle hashes of a whole batch are
permuted together with numpy (`fmix32(h) * a + b mod 2^32`) and reduced per document with
`np.minimum.reduceat`. The permutation parameters come from datasketch itself, so signatures (and
the dedup index of published versions) stay compatible.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from datasketch import MinHash

_CHUNK = 1 << 15  # shingles permuted at once: 32k x num_perm x 4 bytes (16 MiB at 128)


@lru_cache(maxsize=8)
def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(2246822507)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(3266489909)
    return h ^ (h >> np.uint32(16))


def shingle_hashes(spans) -> tuple[np.ndarray, np.ndarray]:
    """SHA-1 (first 4 bytes, little endian) of every shingle; returns (hashes, per-doc counts)."""
    digests, counts = [], np.empty(len(spans), np.int64)
    sha1 = hashlib.sha1
    for i, (data, starts, ends) in enumerate(spans):
        view = memoryview(data)
        digests.extend([sha1(view[s:e]).digest()[:4] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)])
        counts[i] = len(starts)
    return np.frombuffer(b"".join(digests), dtype="<u4").astype(np.uint32), counts


def batch_signatures(spans, num_perm: int) -> np.ndarray:
    """(len(spans), num_perm) uint32 signatures; `spans` as from `steps.shingle_spans` (>= 1 shingle each)."""
    a, b = permutations(num_perm)
    hashes, counts = shingle_hashes(spans)
    hashes = _fmix32(hashes)
    doc_starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=doc_starts[1:])
    out = np.empty((len(counts), num_perm), np.uint32)
    # Process whole documents per chunk so each reduceat sees complete documents.
    first = 0
    while first < len(counts):
        last = int(np.searchsorted(doc_starts, doc_starts[first] + _CHUNK, side="left"))
        last = max(last, first + 1)
        lo = doc_starts[first]
        hi = doc_starts[last] if last < len(counts) else len(hashes)
        permuted = hashes[lo:hi, None] * a[None, :] + b[None, :]
        out[first:last] = np.minimum.reduceat(permuted, doc_starts[first:last] - lo, axis=0)
        first = last
    return out
