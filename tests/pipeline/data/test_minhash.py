"""Vectorised MinHash: equal to a one-document reference written with Python integers, independent
of how documents are batched, a good Jaccard estimate; dedup indexes of another scheme are refused."""

import random

import numpy as np
import pyarrow as pa
import pytest
from datagen import make_documents, near_copy

from pipeline.config.data import DedupConfig
from pipeline.data import minhash
from pipeline.data.dedup import INDEX_SCHEMA, load_index
from pipeline.data.shards import to_ipc_bytes
from pipeline.data.stage import check_dedup_scheme
from pipeline.data.steps import shingles
from pipeline.errors import UserError
from pipeline.records import Manifest

M = 1 << 64


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = h * 0xFF51AFD7ED558CCD % M
    h ^= h >> 33
    h = h * 0xC4CEB9FE1A85EC53 % M
    return h ^ (h >> 33)


def _poly(values, base: int) -> int:
    return sum(v * pow(base, i, M) for i, v in enumerate(values)) % M


def reference_signature(text: str, num_perm: int, size: int) -> np.ndarray:
    """The scheme of the module docstring, one shingle at a time (the definition, not the fast path)."""
    a, b = minhash.permutations(num_perm)
    hashes = []
    for shingle in shingles(text, size):
        words = [_fmix64(_poly([c + 1 for c in w], minhash._P)) for w in shingle.split(b" ")] if shingle else []
        hashes.append(_fmix64(_poly(words, minhash._Q)) >> 32)
    permuted = (np.array(hashes, np.uint64)[:, None] * a.astype(np.uint64) + b) % (1 << 32)
    return permuted.min(axis=0).astype(np.uint32)


EDGE_CASES = [
    "",
    "  \n\t ",
    "!!! ...",
    "Hello",
    "a b c",
    "One TWO three four five six seven eight",
    "foo,bar;;baz\n\tqux  quux corge_grault 12ab x" + "y" * 300,
    "Ünïcödé ΣΑΣ straße İstanbul naïve x\x00y K (Kelvin sign) 数据 去重",
]


def test_signatures_equal_the_reference_definition():
    signatures = minhash.batch_signatures(EDGE_CASES, 64, 5)
    for text, signature in zip(EDGE_CASES, signatures, strict=True):
        assert (signature == reference_signature(text, 64, 5)).all(), text
        assert (minhash.batch_signatures([text], 64, 5)[0] == signature).all()


def test_signatures_do_not_depend_on_batching(monkeypatch):
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdefghÄé_9") for _ in range(rng.randint(1, 8))) for _ in range(300)]
    docs = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 400))) for _ in range(120)]
    whole = minhash.batch_signatures(docs, 32, 3)
    monkeypatch.setattr(minhash, "_GROUP_BYTES", 1000)
    monkeypatch.setattr(minhash, "_PERM_CHUNK", 257)
    assert (minhash.batch_signatures(docs, 32, 3) == whole).all()
    assert (minhash.batch_signatures(docs[::-1], 32, 3) == whole[::-1]).all()
    for doc, signature in zip(docs[:10], whole[:10], strict=True):
        assert (signature == reference_signature(doc, 32, 3)).all()


def test_estimated_jaccard_tracks_the_true_jaccard():
    rng = random.Random(1)
    docs = make_documents(n=40)
    copies = [near_copy(d, rng) for d in docs]
    signatures = minhash.batch_signatures(docs + copies, 128, 5)
    for i in range(len(docs)):
        a, b = set(shingles(docs[i], 5)), set(shingles(copies[i], 5))
        estimate = (signatures[i] == signatures[len(docs) + i]).mean()
        assert abs(estimate - len(a & b) / len(a | b)) < 0.12
        assert (signatures[i] == signatures[(i + 1) % len(docs)]).mean() < 0.1  # unrelated documents


def test_index_of_another_scheme_is_refused_up_front():
    config = DedupConfig()

    class Data:
        name, dedup = "web", config

    # No dedup_scheme recorded (fields other than the two the check reads are left out).
    legacy = Manifest.model_construct(version=3, dedup_index=["datasets/web/dedup/r/part-1.arrow"])
    with pytest.raises(UserError, match=r"v3 was deduplicated with MinHash scheme 'minhash-sha1-affine32-v1'.*new"):
        check_dedup_scheme(legacy, Data)
    check_dedup_scheme(legacy.model_copy(update={"dedup_scheme": minhash.SCHEME}), Data)
    Data.dedup = DedupConfig(near=False)  # exact dedup only: signatures are never compared
    check_dedup_scheme(legacy, Data)

    row = {"hash": [b"\0" * 16], "minhash": [[1] * config.num_perm], "doc_key": ["k"]}
    current = to_ipc_bytes(pa.table(row, schema=INDEX_SCHEMA))
    assert load_index(current, -1, config).num_rows == 1
    old = to_ipc_bytes(pa.table(row, schema=INDEX_SCHEMA.remove_metadata()))
    with pytest.raises(ValueError, match="minhash-sha1-affine32-v1"):
        load_index(old, -1, config)


def test_permutations_are_datasketchs():
    from datasketch import MinHash

    for num_perm in (16, 128):
        a, b = MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
        ours = minhash.permutations(num_perm)
        assert (ours[0] == a).all() and (ours[1] == b).all() and ours[0].dtype == np.uint32


def test_stage_modules_do_not_import_torch_or_scipy():
    """Ray workers import these whenever they unpickle a stage function: seconds each if they did."""
    import subprocess
    import sys

    modules = "pipeline.data.stage, pipeline.data.plan, pipeline.data.dedup_stage, pipeline.data.tokenize_pack"
    code = f"import sys, {modules}; print(sorted({{'torch', 'transformers', 'scipy', 'sora'}} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
