"""The rows of the built-in suites, from held-out documents: pure, deterministic functions.

Each function takes the held-out documents (sorted by `doc_hash`) and the suite settings and
returns plain rows; every choice (which documents, which offsets, which distractors, which split)
is a hash of `doc_hash` + offset under the configured salt, so the same dataset version and
settings always give the same rows, whatever order the documents were listed in.
"""

from __future__ import annotations

from collections import Counter

from ..config.evaluate import SuiteConfig
from ..errors import UserError
from .heldout import HeldoutDoc, draw, unit


def heldout_hint(got: int, need: int, fraction: float | None) -> str:
    """How to get more held-out examples; with the current fraction known, a suggested value."""
    suggestion = ""
    if fraction and got:
        suggestion = f" (now {fraction:g}; about {min(0.9, fraction * need / got * 1.2):.2g} should do)"
    return (
        f"raise data.split.heldout_fraction{suggestion} and rerun the data stage, "
        "or lower eval.suites.min_test_examples"
    )


def ppl_rows(docs: list[HeldoutDoc], cfg: SuiteConfig) -> list[dict]:
    """heldout-ppl: the first `ppl_max_chars` characters (cut at a line end) of up to `ppl_max_docs` documents."""
    chosen = sorted(docs, key=lambda d: unit(cfg.salt, "ppl", d.doc_hash))[: cfg.ppl_max_docs]
    rows = []
    for doc in sorted(chosen, key=lambda d: d.doc_hash):
        text = doc.text[: cfg.ppl_max_chars]
        cut = text.rfind("\n")
        if len(doc.text) > cfg.ppl_max_chars and cut > cfg.ppl_max_chars // 2:
            text = text[: cut + 1]
        rows.append({"text": text, "doc_hash": doc.doc_hash})
    return rows


def _evenly(items: list, k: int) -> list:
    """k items spread evenly over `items` (all of them when there are at most k)."""
    if len(items) <= k:
        return items
    if k == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _usable(text: str, minimum: int) -> bool:
    return sum(not c.isspace() for c in text) >= minimum


def cloze_rows(docs: list[HeldoutDoc], cfg: SuiteConfig) -> list[dict]:
    """4-way cloze: whole lines of context, the true next `cloze_ending_chars` characters, and three
    endings of the same length starting at a line of other held-out documents."""
    ending, context_chars = cfg.cloze_ending_chars, cfg.cloze_context_chars
    minimum = max(1, ending // 4)
    candidates = []
    for doc in docs:
        starts = doc.line_starts
        points = [p for p in starts if p >= min(context_chars, len(doc.text) // 2) and p + ending <= len(doc.text)]
        points = [p for p in points if _usable(doc.text[p : p + ending], minimum)]
        for point in _evenly(points, cfg.cloze_per_doc):
            first = next(s for s in starts if s >= point - context_chars)  # whole lines, about context_chars
            context = doc.text[first:point]
            if first < point and _usable(context, minimum):
                candidates.append((doc, point, context))
    candidates.sort(key=lambda c: unit(cfg.salt, "cloze", c[0].doc_hash, c[1]))
    rows = []
    for doc, point, context in candidates[: cfg.cloze_max_examples]:
        true = doc.text[point : point + ending]
        endings = _distractors(docs, doc, point, true, cfg)
        if endings is None:
            continue
        label = draw(cfg.salt, "cloze-label", doc.doc_hash, point) % 4
        endings.insert(label, true)
        rows.append({"context": context, "endings": endings, "label": label, "doc_hash": doc.doc_hash, "offset": point})
    rows.sort(key=lambda r: (r["doc_hash"], r["offset"]))
    return rows


def _distractors(docs: list[HeldoutDoc], doc: HeldoutDoc, point: int, true: str, cfg: SuiteConfig) -> list[str] | None:
    """Three distinct endings of len(true) characters from three other documents, chosen by hash."""
    ending, chosen, used = len(true), [], {doc.doc_hash}
    for attempt in range(64):
        if len(chosen) == 3:
            break
        other = docs[draw(cfg.salt, "cloze-doc", doc.doc_hash, point, attempt) % len(docs)]
        if other.doc_hash in used:
            continue
        starts = [s for s in other.line_starts if s + ending <= len(other.text)]
        if not starts:
            continue
        start = starts[draw(cfg.salt, "cloze-start", doc.doc_hash, point, attempt) % len(starts)]
        text = other.text[start : start + ending]
        if text in chosen or text == true or not _usable(text, max(1, ending // 4)):
            continue
        chosen.append(text)
        used.add(other.doc_hash)
    return chosen if len(chosen) == 3 else None


def check_cloze(rows: list[dict], docs: list[HeldoutDoc], cfg: SuiteConfig, fraction: float | None = None) -> None:
    if len(rows) < cfg.min_test_examples:
        raise UserError(
            f"held-out split too small for cloze: {len(rows)} examples from {len(docs)} held-out documents, "
            f"need at least {cfg.min_test_examples} (about {cfg.cloze_per_doc} per document, so about "
            f"{-(-cfg.min_test_examples // cfg.cloze_per_doc)} documents): "
            + heldout_hint(len(rows), cfg.min_test_examples, fraction)
        )


def snippets(doc: HeldoutDoc, cfg: SuiteConfig) -> list[tuple[int, str]]:
    """Non-overlapping windows of `classify_snippet_chars` characters starting at lines, evenly spread."""
    size, windows, end = cfg.classify_snippet_chars, [], 0
    for start in doc.line_starts:
        if (start >= end and start + size <= len(doc.text)) or (start == 0 and len(doc.text) < size):
            text = doc.text[start : start + size]
            if _usable(text, cfg.classify_min_snippet_chars):
                windows.append((start, text))
                end = start + size
    return _evenly(windows, cfg.classify_snippets_per_doc)


def classify_rows(
    docs: list[HeldoutDoc], cfg: SuiteConfig, fraction: float | None = None
) -> tuple[dict[str, list[dict]], dict]:
    """(rows per split, class info). Documents are split per class by hash, so none feeds two splits."""
    labelled = [d for d in docs if d.label not in (None, "")]
    if not labelled:
        raise UserError(
            "classify: the held-out documents carry no label: set data.sources[].label_field to the field "
            "holding each document's class (the python-stdlib source labels files by top-level package), "
            "or drop classify from eval.suites.enabled"
        )
    doc_counts = Counter(d.label for d in labelled)
    ranked = sorted(doc_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [label for label, n in ranked if n >= cfg.classify_min_docs_per_class][: cfg.classify_max_classes]
    if len(kept) < 2:
        top = ", ".join(f"{label}: {n}" for label, n in ranked[:5])
        raise UserError(
            f"classify needs at least 2 classes with {cfg.classify_min_docs_per_class} or more held-out documents "
            f"(eval.suites.classify_min_docs_per_class), found {len(kept)} among {len(doc_counts)} labels "
            f"({top}): raise data.split.heldout_fraction (and rerun the data stage), lower "
            "eval.suites.classify_min_docs_per_class, or use a corpus with more labels"
        )
    classes = sorted(kept)
    split_of = _split_documents(labelled, classes, cfg)
    rows = _class_rows(labelled, classes, split_of, cfg)
    for split in rows:
        rows[split].sort(key=lambda r: (r["label_id"], r["doc_hash"], r["offset"]))
    info = _class_info(classes, rows, split_of, labelled, cfg)
    if len(rows["test"]) < cfg.min_test_examples:
        test_docs = sum(info["docs"]["test"].values())
        raise UserError(
            f"held-out split too small for classify: {len(rows['test'])} test examples from {test_docs} test "
            f"documents ({len(labelled)} labelled held-out documents, {len(classes)} classes), need at least "
            f"{cfg.min_test_examples}: {heldout_hint(len(rows['test']), cfg.min_test_examples, fraction)}, "
            "or raise eval.suites.classify_snippets_per_doc / classify_max_per_class"
        )
    return rows, info


def _split_documents(labelled: list[HeldoutDoc], classes: list[str], cfg: SuiteConfig) -> dict[str, str]:
    """doc_hash -> test / validation / train, per class by hash (a document feeds one split)."""
    split_of: dict[str, str] = {}
    for label in classes:
        members = sorted((d for d in labelled if d.label == label), key=lambda d: unit(cfg.salt, "split", d.doc_hash))
        n = len(members)
        n_test = max(1, round(n * cfg.classify_test_fraction))
        n_val = max(1, round(n * cfg.classify_validation_fraction))
        for i, doc in enumerate(members):
            split_of[doc.doc_hash] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return split_of


def _class_rows(
    labelled: list[HeldoutDoc], classes: list[str], split_of: dict[str, str], cfg: SuiteConfig
) -> dict[str, list[dict]]:
    """Snippet rows per split: each class's snippets in hash order, up to the split's cap."""
    class_id = {label: i for i, label in enumerate(classes)}
    caps = {"train": cfg.classify_train_max_per_class, "validation": cfg.classify_max_per_class}
    caps["test"] = cfg.classify_max_per_class
    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    pools: dict[tuple[str, str], list] = {(label, split): [] for label in classes for split in rows}
    for doc in labelled:
        if doc.doc_hash in split_of:
            pool = pools[doc.label, split_of[doc.doc_hash]]
            pool += [(unit(cfg.salt, "snippet", doc.doc_hash, s), doc, s, text) for s, text in snippets(doc, cfg)]
    for label in classes:
        for split in rows:
            pool = sorted(pools[label, split], key=lambda item: item[0])
            for _, doc, start, text in pool[: caps[split]]:
                row = {"text": text, "label": label, "label_id": class_id[label], "doc_hash": doc.doc_hash}
                rows[split].append({**row, "offset": start})
    return rows


def _class_info(classes, rows, split_of, labelled, cfg) -> dict:
    examples = {s: {c: sum(r["label"] == c for r in rs) for c in classes} for s, rs in rows.items()}
    docs = {s: {c: 0 for c in classes} for s in rows}
    for d in labelled:
        if d.doc_hash in split_of:
            docs[split_of[d.doc_hash]][d.label] += 1
    test = examples["test"]
    total = sum(test.values())
    return {
        "classes": classes,
        "examples": examples,
        "docs": docs,
        "dropped_labels": sorted({d.label for d in labelled} - set(classes)),
        "chance": {
            "uniform": 1.0 / len(classes),
            "majority": max(test.values()) / total if total else 0.0,
            "majority_class": max(classes, key=lambda c: (test[c], c)) if total else None,
        },
    }
