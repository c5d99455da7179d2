"""Synthetic jsonl corpora for the data-stage benches (`bench/data_scale.py`): deterministic from a
seed, streamed to disk file by file, fast (word ids drawn with numpy from a fixed vocabulary).

Documents are 55-95 words of a Zipf-distributed vocabulary of pseudo-words (about 330-570 bytes).
A fraction are exact copies and a fraction near copies (one word changed) of earlier documents,
drawn from a reservoir that spans earlier files, so that dedup has cross-block work. At 55+ words
one changed word keeps the 5-word-shingle Jaccard similarity above 0.82, over the default 0.8
threshold. The words are lowercase ASCII letters, so a line is built without `json.dumps`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np

VOCABULARY = 30_000
MIN_WORDS, MAX_WORDS = 55, 95
RESERVOIR = 20_000
# Marks the planted boilerplate cluster: generated words are lowercase, so no other document starts so.
BOILERPLATE_HEADER = "NOTICE BOILERPLATE"
BOILERPLATE_WORDS, BOILERPLATE_SLOTS = 200, (50, 100, 150)


def vocabulary(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, VOCABULARY)
    letters = rng.integers(0, 26, int(lengths.sum())).astype(np.uint8) + ord("a")
    text = letters.tobytes().decode()
    ends = np.cumsum(lengths)
    return [text[e - n : e] for n, e in zip(lengths.tolist(), ends.tolist(), strict=True)]


def _zipf(n: int) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + 2.7)  # Zipf-Mandelbrot: a few very frequent words, a long tail
    return weights / weights.sum()


def documents(count: int, seed: int, chunk: int = 8192) -> Iterator[str]:
    """`count` unique-by-construction random documents, generated a chunk at a time."""
    words = np.asarray(vocabulary(seed), dtype=object)
    rng = np.random.default_rng(seed + 1)
    cdf = np.cumsum(_zipf(len(words)))
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        lengths = rng.integers(MIN_WORDS, MAX_WORDS + 1, n)
        ids = np.searchsorted(cdf, rng.random(int(lengths.sum())) * cdf[-1])
        flat = words[ids].tolist()
        ends = np.cumsum(lengths).tolist()
        begin = 0
        for end in ends:
            yield " ".join(flat[begin:end])
            begin = end


class _Planter:
    """Replaces a fraction of documents by exact or near copies of earlier ones (reservoir sample)."""

    def __init__(self, seed: int, exact: float, near: float, words: list[str]) -> None:
        self.rng, self.exact, self.near, self.words = random.Random(seed + 2), exact, near, words
        self.reservoir: list[str] = []
        self.seen = 0
        self.planted = {"exact": 0, "near": 0}

    def __call__(self, text: str) -> str:
        draw = self.rng.random()
        if self.reservoir and draw < self.exact + self.near:
            original = self.reservoir[self.rng.randrange(len(self.reservoir))]
            if draw < self.exact:
                self.planted["exact"] += 1
                return original
            self.planted["near"] += 1
            parts = original.split(" ")
            position = self.rng.randrange(len(parts))
            parts[position] = self.rng.choice(self.words) + "Q"  # words are lowercase: never the same word
            return " ".join(parts)
        self.seen += 1
        if len(self.reservoir) < RESERVOIR:
            self.reservoir.append(text)
        elif (slot := self.rng.randrange(self.seen)) < RESERVOIR:
            self.reservoir[slot] = text
        return text


def boilerplate(count: int, seed: int) -> Iterator[str]:
    """`count` near-identical documents: one 200-word template with 3 slot words varied per document
    (two documents differing in all three slots: 5-shingle Jaccard (196-15)/(196+15) ~0.86)."""
    words = vocabulary(seed)
    rng = random.Random(seed + 3)
    template = BOILERPLATE_HEADER.split() + [rng.choice(words) for _ in range(BOILERPLATE_WORDS - 2)]
    for _ in range(count):
        text = list(template)
        for slot in BOILERPLATE_SLOTS:
            text[slot] = rng.choice(words)
        yield " ".join(text)


def write_corpus(
    directory: Path,
    docs: int,
    seed: int = 0,
    docs_per_file: int = 8192,
    exact: float = 0.02,
    near: float = 0.02,
    extra: Iterator[str] | None = None,
    extra_count: int = 0,
) -> dict:
    """`docs` documents (plus `extra_count` from `extra`, spread evenly) as jsonl files of
    `docs_per_file` lines; returns files, documents, bytes and the planted duplicate counts."""
    directory.mkdir(parents=True, exist_ok=True)
    planter = _Planter(seed, exact, near, vocabulary(seed))
    total = docs + extra_count
    every = total / extra_count if extra_count else 0.0
    base = documents(docs, seed)
    files = size = 0
    handle = None
    next_extra = 0.0
    for index in range(total):
        if index % docs_per_file == 0:
            if handle is not None:
                handle.close()
            handle = open(directory / f"part-{files:05d}.jsonl", "w")
            files += 1
        if extra is not None and extra_count and index >= next_extra:
            text = next(extra)
            next_extra += every
        else:
            text = planter(next(base))
        line = '{"text": "' + text + '"}\n'
        handle.write(line)
        size += len(line)
    if handle is not None:
        handle.close()
    return {"files": files, "docs": total, "bytes": size, "planted": planter.planted}


def write_zst(path: Path, decompressed_bytes: int, seed: int = 0) -> dict:
    """One `.jsonl.zst` file of random documents whose decompressed size is about `decompressed_bytes`."""
    import zstandard

    path.parent.mkdir(parents=True, exist_ok=True)
    size = docs = 0
    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
        # Documents are generated in rounds until the size is reached (the count is not known ahead).
        round_seed = seed
        while size < decompressed_bytes:
            for text in documents(65_536, round_seed):
                line = ('{"text": "' + text + '"}\n').encode()
                out.write(line)
                size, docs = size + len(line), docs + 1
                if size >= decompressed_bytes:
                    break
            round_seed += 1000
    return {"files": 1, "docs": docs, "decompressed_bytes": size, "compressed_bytes": path.stat().st_size}
