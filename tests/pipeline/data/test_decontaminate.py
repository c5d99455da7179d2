"""Decontamination: the n-gram hashing and index, the task files, the marking of a record block
(no Ray), and one build that drops, flags and keeps the held-out split disjoint."""

import json
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datagen import data_config, make_documents, write_jsonl

from pipeline.data.decontaminate import mark, plan_of, record_counts, widen
from pipeline.data.dedup_stage import REMOVED_SCHEMA, kept_records
from pipeline.data.eval_tasks import resolve_tasks, task_texts
from pipeline.data.ngrams import FULL, NgramIndex, below, distinct_ngrams, iter_ngrams, sample_threshold
from pipeline.data.quarantine import read_rejects, reject_rows
from pipeline.data.stage import preprocess
from pipeline.data.steps import content_hash
from pipeline.data.summary import Reporter
from pipeline.data.tokenize_pack import assign_split
from pipeline.errors import UserError
from pipeline.keys import DatasetKeys
from pipeline.storage import StorageSettings, open_store

WORDS = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex a jolly vexing zebra".split()


def _index(texts, n=13, task=0, names=("quiz",)):
    return NgramIndex.build([(task, distinct_ngrams(texts, n))], names, n)


# -- n-grams and the index ---------------------------------------------------------------------


def test_equal_ngrams_have_equal_hashes_whatever_their_text_or_group():
    rng = np.random.default_rng(0)
    vocabulary = ["alpha", "Beta", "gamma_1", "délta", "ÉPSILON", "zeta", "eta", "x"]
    texts = [
        "".join(
            rng.choice(vocabulary) + rng.choice([" ", ", ", ". ", "!\n", " -- "]) for _ in range(rng.integers(0, 30))
        )
        for _ in range(200)
    ]
    per_doc, by_ngram = {}, {}
    for hashes, doc in iter_ngrams(texts, 4):
        for h, d in zip(hashes.tolist(), doc.tolist(), strict=True):
            per_doc.setdefault(d, []).append(h)
    for d, text in enumerate(texts):
        words = re.findall(r"\w+", text.lower())
        grams = [" ".join(words[i : i + 4]) for i in range(len(words) - 3)]
        assert len(grams) == len(per_doc.get(d, []))  # fewer than 4 words: no n-gram at all
        for gram, h in zip(grams, per_doc.get(d, []), strict=True):
            assert by_ngram.setdefault(gram, h) == h
    assert len(set(by_ngram.values())) == len(by_ngram)  # distinct n-grams, distinct hashes


def test_a_shared_13_word_span_matches_and_a_12_word_one_does_not():
    row = " ".join(WORDS[:16])
    index = _index([row])
    span13 = " ".join(WORDS[2:15])
    span12 = " ".join(WORDS[2:14])
    docs = [
        f"an unrelated opening sentence. {span13} and then something else entirely",
        f"an unrelated opening sentence. {span12} and then something else entirely",
        "nothing in common with any evaluation set at all, not even close to it really",
        # case, punctuation and spacing are not words: still the same 13 words
        "Intro: " + ", ".join(w.upper() for w in WORDS[2:15]) + "!!! -- the end.",
    ]
    assert index.match(docs).tolist() == [0, -1, -1, 0]


def test_the_first_task_names_a_shared_ngram_and_a_document_takes_its_smallest_task():
    shared, other = " ".join(WORDS[:13]), " ".join(WORDS[3:16])
    index = NgramIndex.build(
        [(1, distinct_ngrams([shared, other], 13)), (0, distinct_ngrams([shared], 13))], ("a", "b"), 13
    )
    assert index.match([shared, other, f"{other} and {shared}"]).tolist() == [0, 1, 0]


def test_subsampling_by_hash_is_one_sample_for_index_and_lookups():
    rng = np.random.default_rng(1)
    vocabulary = [f"w{i}" for i in range(5000)]
    heldout = [" ".join(rng.choice(vocabulary, 200)) for _ in range(50)]
    hashes = distinct_ngrams(heldout, 13)
    threshold = sample_threshold(len(hashes), len(hashes) // 10)
    assert sample_threshold(len(hashes), len(hashes)) == FULL and threshold < FULL
    sampled = below(hashes, threshold)
    assert len(sampled) == pytest.approx(len(hashes) / 10, rel=0.15)
    index = NgramIndex.build([(0, sampled)], ("sora_heldout",), 13)
    # A document matches exactly when one of its n-grams is under the threshold, whatever the
    # other documents looked up with it (their grouping, their order).
    probes = [" ".join(doc.split()[i : i + 13]) for doc in heldout[:10] for i in range(0, 150, 15)]
    expected = [bool((distinct_ngrams([p], 13) < np.uint64(threshold)).any()) for p in probes]
    assert (index.match(probes) >= 0).tolist() == expected
    assert (index.match(probes[::-1]) >= 0).tolist() == expected[::-1]
    whole = [" ".join(doc.split()[:100]) for doc in heldout]  # 88 n-grams each: all found at a 10% rate
    assert (index.match(whole) == 0).all()


# -- task files --------------------------------------------------------------------------------


def test_task_yaml_data_files_are_found_and_every_string_is_a_text(tmp_path):
    (tmp_path / "suites" / "quiz").mkdir(parents=True)
    rows = [{"question": "What is it?", "choices": {"text": ["one two", "three"], "label": ["A", "B"]}, "answer": 1}]
    write_rows(tmp_path / "suites" / "quiz" / "test.jsonl", rows)
    (tmp_path / "suites" / "base.yaml").write_text("dataset_path: json\noutput_type: multiple_choice\n")
    # Sora's stored suites name their files relative to the suites folder, one level up.
    (tmp_path / "suites" / "quiz" / "quiz.yaml").write_text(
        "include: ../base.yaml\ntask: quiz\nprocess_docs: !function utils.process\n"
        "dataset_kwargs:\n  data_files:\n    test: quiz/test.jsonl\n"
    )
    plain = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"prompt": ["a b c"], "id": [3]}), plain)
    settings = StorageSettings()
    tasks = resolve_tasks([str(tmp_path / "suites" / "quiz" / "quiz.yaml"), f"file://{plain}"], settings)
    assert [t.name for t in tasks] == ["quiz", "extra"]
    assert tasks[0].files == (str(tmp_path / "suites" / "quiz" / "test.jsonl"),)
    assert [list(task_texts(t, settings, "NFC")) for t in tasks] == [
        [["What is it?", "one two", "three", "A", "B"]],
        [["a b c"]],
    ]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    ("files", "entry", "message"),
    [
        ({}, "missing.jsonl", r"task file .*missing\.jsonl does not exist"),
        ({"t.yaml": "task: t\ndataset_path: cais/mmlu\n"}, "t.yaml", r"dataset_path 'cais/mmlu'"),
        ({"t.yaml": "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files: gone.jsonl\n"}, "t.yaml", "gone"),
        ({"t.txt": "x"}, "t.txt", "neither an lm-eval task YAML"),
    ],
)
def test_a_bad_task_entry_is_a_user_error_naming_it(tmp_path, files, entry, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        resolve_tasks([str(tmp_path / entry)], StorageSettings())


# -- marking a block ---------------------------------------------------------------------------


def _config(**overrides):
    overrides = {"split": {"val_fraction": 0.0, "heldout_fraction": 0.5}, **overrides}
    return data_config("file:///unused", "/unused", **overrides)


def _block(texts, data):
    hashes = [content_hash(t) for t in texts]
    return pa.table(
        {
            "unit_index": pa.array([0] * len(texts), pa.int32()),
            "source_index": pa.array([0] * len(texts), pa.int32()),
            "order": pa.array(range(len(texts)), pa.int64()),
            "doc_key": [f"doc-{i}" for i in range(len(texts))],
            "text": texts,
            "reject": pa.nulls(len(texts), pa.string()),
            "raw": pa.nulls(len(texts), pa.binary()),
            "hash": pa.array(hashes, pa.binary(16)),
        }
    )


def _texts_by_split(data, want):
    """Texts whose split (by content hash) is each of `want`, in order."""
    found, i = [], 0
    for split in want:
        while assign_split(content_hash(text := f"document {i}: " + " ".join(WORDS)), data) != split:
            i += 1
        found.append(text)
        i += 1
    return found


@pytest.mark.parametrize("action", ["drop", "flag"])
def test_marking_a_block_drops_or_flags_and_skips_held_out_and_duplicates(action):
    config = _config(filters=[{"type": "decontaminate", "action": action}])
    data = config.data
    texts = _texts_by_split(data, ["train", "heldout", "train", "train"])
    batch = _block(texts, data)
    removed = pa.table(
        {"order": [2], "reason": ["exact"], "match_order": [0], "jaccard": [1.0], "match_doc_key": ["doc-0"]},
        schema=REMOVED_SCHEMA,
    )
    index = _index([" ".join(WORDS)], names=("quiz",))
    table, counts = mark(batch, removed, index, plan_of(data.filters[0], data), data)
    # doc 1 is held out (not looked up), doc 2 a duplicate (already removed): 0 and 3 are checked.
    assert counts == Counter({"checked": 2, f"{'flagged' if action == 'flag' else 'dropped'}/quiz": 2})
    marked = {r["order"]: r for r in table.to_pylist()}
    assert marked[2]["reason"] == "exact" and marked[2]["match_task"] is None and not marked[2]["kept"]
    reason = "decontaminate/flagged" if action == "flag" else "decontaminate/quiz"
    for order in (0, 3):
        assert (marked[order]["reason"], marked[order]["match_task"], marked[order]["kept"]) == (
            reason,
            "quiz",
            action == "flag",
        )
    kept = kept_records(batch, table)["order"].to_pylist()
    assert kept == ([0, 1, 3] if action == "flag" else [1])
    rejects = {r["doc_key"]: r for r in reject_rows(batch, table, pa.array(["u"])).to_pylist()}
    assert sorted(rejects) == ["doc-0", "doc-2", "doc-3"]
    assert rejects["doc-0"]["match_task"] == "quiz" and rejects["doc-0"]["kept"] == (action == "flag")
    assert rejects["doc-2"]["reason"] == "exact_duplicate" and rejects["doc-2"]["kept"] is False


def test_a_source_that_skips_the_filter_is_not_looked_up_and_no_match_changes_nothing():
    source = {"kind": "jsonl", "uri": "/unused", "skip_filters": ["decontaminate"]}
    data = _config(filters=[{"type": "decontaminate"}], sources=[source]).data
    batch = _block(_texts_by_split(data, ["train"]), data)
    removed = REMOVED_SCHEMA.empty_table()
    plan = plan_of(data.filters[0], data)
    assert mark(batch, removed, _index([" ".join(WORDS)]), plan, data) == (None, Counter({"checked": 0}))
    data = _config(filters=[{"type": "decontaminate"}]).data
    assert mark(batch, removed, _index(["nothing like it at all"]), plan_of(data.filters[0], data), data)[0] is None
    assert widen(removed).num_rows == 0 and "kept" in widen(removed).column_names


def test_drops_become_rejects_and_the_rest_counters():
    stats = SimpleNamespace(rejected={"too_short": 1}, live=10, filter_counts={"length/checked": 11})
    counts = Counter({"checked": 9, "dropped/quiz": 2, "flagged/mmlu": 1, "index_ngrams": 50})
    record_counts(SimpleNamespace(read_stats=stats), "decontaminate", counts)
    assert stats.rejected == {"too_short": 1, "decontaminate/quiz": 2} and stats.live == 8
    assert stats.filter_counts == {
        "decontaminate/checked": 9,
        "decontaminate/flagged": 1,
        "decontaminate/flagged/mmlu": 1,
        "decontaminate/index_ngrams": 50,
        "length/checked": 11,
    }


# -- one build ---------------------------------------------------------------------------------


def _build(root, src, tmp_path, action="drop", read_blocks=3):
    task = tmp_path / "tasks" / "quiz.yaml"
    filters = [{"type": "length", "min_chars": 8}, {"type": "decontaminate", "tasks": [str(task)], "action": action}]
    split = {"val_fraction": 0.1, "heldout_fraction": 0.2}
    config = data_config(f"file://{root}", str(src), filters=filters, split=split, read_blocks=read_blocks)
    return config, preprocess(config, Reporter(quiet=True))


def _pick(docs, data, split, after=0):
    return next(i for i in range(after, len(docs)) if assign_split(content_hash(docs[i]), data) == split)


def _rejects(config, manifest):
    store = open_store(config.storage.root)
    rows = read_rejects(store, DatasetKeys(manifest.dataset).rejects(manifest.run_id)).to_pylist()
    return {r["text"].split(":")[0]: (r["reason"], r["match_task"], r["kept"]) for r in rows}


@pytest.mark.usefixtures("ray_local")
def test_a_build_drops_or_flags_contaminated_documents_and_keeps_the_heldout_split(tmp_path):
    docs = make_documents(seed=4, n=40)
    probe = _config(split={"val_fraction": 0.1, "heldout_fraction": 0.2}).data
    train, held = _pick(docs, probe, "train"), _pick(docs, probe, "heldout")
    words = docs[train].split(" ")
    # A quiz row quotes 13 words of a training document (upper case, punctuated); another training
    # document quotes 13 words of a held-out one; a third shares only 12 words with the quiz row.
    (tmp_path / "tasks").mkdir()
    write_rows(tmp_path / "tasks" / "q.jsonl", [{"question": ", ".join(words[10:23]).upper() + "?", "answer": "yes"}])
    (tmp_path / "tasks" / "quiz.yaml").write_text(
        "task: quiz\ndataset_path: json\ndataset_kwargs:\n  data_files: q.jsonl\n"
    )
    filler = make_documents(seed=9, n=6, prefix="copy ")
    quoting = [f"{filler[k]} {' '.join(docs[held].split(' ')[20:33])}" for k in range(3)]
    near_miss = [f"{filler[k]} {' '.join(words[11:23])}" for k in range(3, 6)]
    quoting = next(t for t in quoting if assign_split(content_hash(t), probe) == "train")
    near_miss = next(t for t in near_miss if assign_split(content_hash(t), probe) == "train")
    # Boilerplate: 13 words every held-out document also holds (6 > heldout_max_docs 2), quoted by a
    # training document: a licence header, not a leak; it is kept.
    header = "this file is distributed under the same licence terms as the rest of the package"
    for i, doc in enumerate(docs):
        # The same words after other separators: whichever variant the split puts in held-out.
        variants = [f"{doc}{sep}{header}" for sep in (" ", "\n", ". ", "\n\n")]
        held_variant = next((v for v in variants if assign_split(content_hash(v), probe) == "heldout"), None)
        if i not in (train, held) and held_variant is not None:
            docs[i] = held_variant
    assert sum(header in d for d in docs) >= 6
    boilerplate = next(
        t
        for t in (f"{f} {header}" for f in make_documents(seed=12, n=20, prefix="boiler "))
        if assign_split(content_hash(t), probe) == "train"
    )
    write_jsonl(tmp_path / "src" / "a.jsonl", docs + [quoting, near_miss, boilerplate])

    config, dropped = _build(tmp_path / "drop", tmp_path / "src", tmp_path)
    label = lambda text: text.split(":")[0]  # noqa: E731
    rejects = _rejects(config, dropped)
    assert rejects == {
        label(docs[train]): ("decontaminate/quiz", "quiz", False),
        label(quoting): ("decontaminate/sora_heldout", "sora_heldout", False),
    }
    stats = dropped.stats.run
    assert stats.rejected == {"decontaminate/quiz": 1, "decontaminate/sora_heldout": 1}
    assert stats.docs_read == stats.docs_kept + 2 + sum(stats.duplicates.values())
    store = open_store(config.storage.root)
    heldout = pa.concat_tables([read_shard(store, e) for e in dropped.split("heldout")])["text"].to_pylist()
    assert docs[held] in heldout
    # Every kept document but the held-out ones was looked up, and the two dropped ones.
    assert stats.filters["decontaminate/checked"] == stats.docs_kept - len(heldout) + 2
    assert stats.filters["decontaminate/index_ngrams"] > 0 and stats.filters["decontaminate/task_ngrams"] == 1
    assert stats.filters["decontaminate/common_ngrams"] == 3  # the 15-word header's 13-grams

    # Flagging, with another block layout: the same documents, named the same, kept in training.
    config, flagged = _build(tmp_path / "flag", tmp_path / "src", tmp_path, action="flag", read_blocks=1)
    assert _rejects(config, flagged) == {k: ("decontaminate/flagged", m, True) for k, (_, m, _) in rejects.items()}
    assert (
        flagged.stats.run.docs_kept == stats.docs_kept + 2 and flagged.stats.run.filters["decontaminate/flagged"] == 2
    )

    # A refresh: a new document quoting the parent version's held-out document is dropped too.
    fresh = [f"{t} {' '.join(docs[held].split(' ')[40:53])}" for t in make_documents(seed=11, n=5, prefix="new ")]
    fresh = next(t for t in fresh if assign_split(content_hash(t), probe) == "train")
    write_jsonl(tmp_path / "src" / "b.jsonl", [fresh])
    config, refreshed = _build(tmp_path / "drop", tmp_path / "src", tmp_path)
    assert _rejects(config, refreshed) == {label(fresh): ("decontaminate/sora_heldout", "sora_heldout", False)}


def read_shard(store, entry):
    from pipeline.data.shards import read_shard as read

    return read(store, entry)


@pytest.mark.usefixtures("ray_local")
def test_a_missing_task_file_fails_the_build_before_anything_is_read(tmp_path):
    write_jsonl(tmp_path / "src" / "a.jsonl", make_documents(n=5))
    filters = [{"type": "decontaminate", "tasks": [str(tmp_path / "gone.jsonl")]}]
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "src"), filters=filters)
    with pytest.raises(UserError, match=r"gone\.jsonl does not exist"):
        preprocess(config, Reporter(quiet=True))
    assert not [k for k in open_store(config.storage.root).list("datasets") if "/read/" in k]


def test_heldout_counts_and_sample_rate_do_not_depend_on_the_block_layout():
    from pipeline.data.decontaminate import SKETCH, distinct_estimate, document_frequencies, heldout_frequencies
    from pipeline.data.ngrams import below, sample_threshold

    rng = np.random.default_rng(3)
    vocabulary = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choice(vocabulary, 120)) for _ in range(60)]
    texts += [f"{t} same thirteen words shared by many documents of the split for sure ok" for t in texts[:8]]

    def layout(blocks):
        parts = [document_frequencies(texts[i::blocks], 13) for i in range(blocks)]
        distinct = distinct_estimate([h[:SKETCH] for h, _ in parts])
        threshold = sample_threshold(distinct, 2000)
        sampled = [(below(h, threshold), d[: len(below(h, threshold))]) for h, d in parts]
        return distinct, heldout_frequencies(sampled)

    (d1, (h1, c1)), (d5, (h5, c5)) = layout(1), layout(5)
    assert d1 == d5 and np.array_equal(h1, h5) and np.array_equal(c1, c5)
    assert 0.9 * 2000 < len(h1) < 1.1 * 2000  # the sample is the budget, within the sketch's error
    whole, counts = document_frequencies(texts, 13)
    assert abs(distinct_estimate([whole[:SKETCH]]) - len(whole)) < 0.05 * len(whole)
    assert counts.max() == 8  # the shared phrase's 13-grams: in 8 documents, counted once each


def test_merging_stored_tables_in_groups_sums_the_same_counts(tmp_path):
    from pipeline.data import decontaminate as decon
    from pipeline.data.ngrams import FULL

    rng = np.random.default_rng(5)
    vocabulary = [f"v{i}" for i in range(50)]
    texts = [" ".join(rng.choice(vocabulary, 60)) for _ in range(40)]
    root, prefix = f"file://{tmp_path}", "scratch/heldout"
    keys = [decon._store_hashes(texts[i::7], 13, root, None, prefix)[0] for i in range(7)]
    expected = decon.document_frequencies(texts, 13)
    merged = keys
    while len(merged) > 1:  # groups of two instead of GROUP: three levels
        merged = [
            decon._group_merge(merged[i : i + 2], FULL, root, None, f"{prefix}/m") for i in range(0, len(merged), 2)
        ]
    table = decon.read_table(root, None, merged[0])
    assert np.array_equal(table["hash"].to_numpy(), expected[0]) and np.array_equal(
        table["docs"].to_numpy(), expected[1]
    )
    sketch = decon._group_sketch(keys, root, None)
    assert np.array_equal(sketch, expected[0][: decon.SKETCH])
