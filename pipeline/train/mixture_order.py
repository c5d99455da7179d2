"""Which source each position of a mixture's global sequence draws from, exactly by weight.

The sequence is cut into chunks of `CHUNK` positions. How many of the first T positions belong
to each source is the Sainte-Laguë apportionment of T seats by weight: the T smallest
"seat priorities" (2j + 1) / weight_s, ties broken by source index. That allocation is
house-monotone (adding positions never takes one from a source), so chunk c holds exactly
`alloc(end) - alloc(start)` positions of each source, and the counts are exact at every chunk
boundary: after T positions a source with weight w has drawn round(w T) samples, give or take
one. Inside a chunk the sources are interleaved by a seeded permutation, so a source's samples
spread across each global batch.

Everything is a pure function of (seed, weights, position): `alloc(T)` costs O(sources), a chunk
O(CHUNK); nothing is accumulated, so resuming at any position needs no replay (Megatron's blended
dataset precomputes an index over all samples instead).
"""

from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction

import numpy as np

CHUNK = 1024  # positions per interleaving chunk (a constant: the order must not depend on the run's batch)
MIXTURE_STREAM = 2**31 - 1  # PCG64 key that no source index uses


def integer_weights(weights: list[float]) -> list[int]:
    """Weights as integers with the same ratios (to 1e-6), so apportionment compares exactly."""
    fractions = [Fraction(w).limit_denominator(10**6) for w in weights]
    if any(f <= 0 for f in fractions):
        raise ValueError(f"mixture weights must be positive, got {weights}")
    denominator = 1
    for f in fractions:
        denominator = denominator * f.denominator // np.gcd(denominator, f.denominator)
    return [int(f * denominator) for f in fractions]


def allocation(weights: list[int], total: int) -> list[int]:
    """Positions of each source among the first `total`: the `total` smallest priorities
    (2j+1)/w_s, ties to the lower source index (exact integer arithmetic)."""
    whole = sum(weights)
    seats = [(2 * total * w + whole) // (2 * whole) for w in weights]  # every priority <= 2 total / whole

    def next_priority(s: int) -> Fraction:
        return Fraction(2 * seats[s] + 1, weights[s])

    while sum(seats) < total:
        best = min(range(len(weights)), key=lambda s: (next_priority(s), s))
        seats[best] += 1
    while sum(seats) > total:
        held = [s for s in range(len(weights)) if seats[s]]
        worst = max(held, key=lambda s: (Fraction(2 * seats[s] - 1, weights[s]), s))
        seats[worst] -= 1
    return seats


class MixtureOrder:
    """Position of the global sequence -> (source, position in that source's own sequence)."""

    def __init__(self, weights: list[float], seed: int) -> None:
        self.weights = integer_weights(weights)
        self.seed = seed
        self._chunks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @property
    def sources(self) -> int:
        return len(self.weights)

    def drawn(self, total: int) -> np.ndarray:
        """Samples drawn from each source among the first `total` positions."""
        chunk, inside = divmod(int(total), CHUNK)
        counts = np.asarray(allocation(self.weights, chunk * CHUNK), dtype=np.int64)
        if inside:
            source, _ = self._chunk(chunk)
            counts += np.bincount(source[:inside], minlength=self.sources)
        return counts

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, position within source) of every position of one chunk."""
        if chunk not in self._chunks:
            before = np.asarray(allocation(self.weights, chunk * CHUNK), dtype=np.int64)
            after = np.asarray(allocation(self.weights, (chunk + 1) * CHUNK), dtype=np.int64)
            labels = np.repeat(np.arange(self.sources), after - before)
            rng = np.random.Generator(np.random.PCG64([self.seed, MIXTURE_STREAM, chunk]))
            source = labels[rng.permutation(CHUNK)]
            index = np.empty(CHUNK, dtype=np.int64)
            for s in range(self.sources):
                mine = np.flatnonzero(source == s)
                index[mine] = before[s] + np.arange(len(mine))
            self._chunks[chunk] = (source, index)
            while len(self._chunks) > 2:
                self._chunks.popitem(last=False)
        return self._chunks[chunk]

    def split(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, source position) of the global positions start .. start+count-1."""
        positions = np.arange(start, start + count, dtype=np.int64)
        source = np.empty(count, dtype=np.int64)
        index = np.empty(count, dtype=np.int64)
        chunks = positions // CHUNK
        for chunk in np.unique(chunks).tolist():
            here = chunks == chunk
            chunk_source, chunk_index = self._chunk(chunk)
            source[here] = chunk_source[positions[here] - chunk * CHUNK]
            index[here] = chunk_index[positions[here] - chunk * CHUNK]
        return source, index

    def first_position_of(self, source: int, index: int) -> int:
        """The global position at which `source` draws its sample number `index` (0-based)."""
        low, high = 0, 1
        while allocation(self.weights, high * CHUNK)[source] <= index:  # first chunk that reaches it
            low, high = high, high * 2
        while low < high:
            middle = (low + high) // 2
            if allocation(self.weights, (middle + 1) * CHUNK)[source] > index:
                high = middle
            else:
                low = middle + 1
        chunk_source, chunk_index = self._chunk(low)
        inside = np.flatnonzero((chunk_source == source) & (chunk_index == index))
        return low * CHUNK + int(inside[0])
