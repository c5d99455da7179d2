"""The rows of the built-in suites, from held-out documents streamed past them: deterministic, bounded.

Every choice (which documents, which offsets, which distractors, which split) is a hash of
`doc_hash` + offset under the configured salt, so the same dataset version and settings always give
the same rows, whatever order the documents arrive in (the rows are those the earlier in-memory
builder wrote, byte for byte). Each suite is a builder fed every document in passes (`build.py`
drives them):

    pass 1  add(doc)    what one document offers, of which only the capped first-by-hash are kept
    plan(order)         after a pass, with every document hash known (sorted): whether another pass
                        is needed, and what it should cut
    pass 2  see(doc)    the pieces of the documents pass 1 chose (snippets, distractor endings);
                        a third pass only for cloze examples short of distractors after it
    rows()              the suite's rows (and its errors, raised in the order the suites are built)

What a builder holds is bounded by the suite caps (`ppl_max_docs`, `cloze_max_examples`,
`classify_*_max_per_class`, with slack for `Smallest`), plus a few bytes per document until the first
`plan` (a rank key per labelled document for classify): never the documents' text.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from ..config.evaluate import SuiteConfig
from ..errors import UserError
from .heldout import HeldoutDoc, draw, unit

DISTRACTOR_ATTEMPTS = 64  # draws of another document per cloze example before giving the example up
FIRST_ATTEMPTS = 8  # of them drawn before the first look at the documents (three usually take 3-4)
SPLITS = ("train", "validation", "test")
_LAST = (2.0, "")  # a rank key above every document's (unit() < 1)


class Smallest:
    """The `k` items of smallest key among those added (keys unique and totally ordered): the first
    `k` of `sorted(everything)` without holding everything."""

    def __init__(self, k: int) -> None:
        self.k, self.items = k, []
        # No smaller than the k-th smallest key added so far, once k were added (None before): an item
        # with a larger key can never be among the first k, so a caller may skip making it.
        self.bound: tuple | None = None

    def add(self, key: tuple, item: Any) -> None:
        self.items.append((key, item))
        # Trimmed once a quarter more than k came in: sorting a mostly sorted list is cheap, and a
        # fresh `bound` lets the generative builders skip more documents unparsed.
        if len(self.items) >= self.k + self.k // 4 + 16 or (self.bound is None and len(self.items) >= self.k):
            self._trim()

    def _trim(self) -> None:
        self.items.sort(key=lambda pair: pair[0])
        del self.items[self.k :]
        if len(self.items) == self.k:
            self.bound = self.items[-1][0]

    def first(self) -> list:
        """The kept items, smallest key first."""
        self._trim()
        return [item for _, item in self.items]


def heldout_hint(got: int, need: int, fraction: float | None, setting: str = "min_test_examples") -> str:
    """How to get more held-out examples; with the current fraction known, a suggested value."""
    suggestion = ""
    if fraction and got:
        suggestion = f" (now {fraction:g}; about {min(0.9, fraction * need / got * 1.2):.2g} should do)"
    return f"raise data.split.heldout_fraction{suggestion} and rerun the data stage, or lower eval.suites.{setting}"


class PplRows:
    """heldout-ppl: the first `ppl_max_chars` characters (cut at a line end) of up to `ppl_max_docs` documents."""

    def __init__(self, cfg: SuiteConfig) -> None:
        self.cfg, self.pick = cfg, Smallest(cfg.ppl_max_docs)

    def add(self, doc: HeldoutDoc) -> None:
        limit = self.cfg.ppl_max_chars
        text = doc.text[:limit]
        cut = text.rfind("\n")
        if len(doc.text) > limit and cut > limit // 2:
            text = text[: cut + 1]
        self.pick.add(
            (unit(self.cfg.salt, "ppl", doc.doc_hash), doc.doc_hash), {"text": text, "doc_hash": doc.doc_hash}
        )

    def plan(self, order: list[str]) -> bool:
        return False  # pass 1 kept everything its rows need

    def rows(self) -> list[dict]:
        return sorted(self.pick.first(), key=lambda row: row["doc_hash"])


def _evenly(items: list, k: int) -> list:
    """k items spread evenly over `items` (all of them when there are at most k)."""
    if len(items) <= k:
        return items
    if k == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _usable(text: str, minimum: int) -> bool:
    """At least `minimum` non-whitespace characters (`str.split` splits where `str.isspace` is true)."""
    return sum(map(len, text.split())) >= minimum


def cloze_points(doc: HeldoutDoc, cfg: SuiteConfig) -> list[tuple[int, str]]:
    """(offset, context) of a document's cloze candidates: up to `cloze_per_doc` line starts, evenly
    spread, each with about `cloze_context_chars` of whole lines before it."""
    ending, context_chars = cfg.cloze_ending_chars, cfg.cloze_context_chars
    minimum = max(1, ending // 4)
    starts = doc.line_starts
    points = [p for p in starts if p >= min(context_chars, len(doc.text) // 2) and p + ending <= len(doc.text)]
    points = [p for p in points if _usable(doc.text[p : p + ending], minimum)]
    found = []
    for point in _evenly(points, cfg.cloze_per_doc):
        first = starts[bisect_left(starts, point - context_chars)]  # whole lines, about context_chars
        context = doc.text[first:point]
        if first < point and _usable(context, minimum):
            found.append((point, context))
    return found


class ClozeRows:
    """4-way cloze: whole lines of context, the true next `cloze_ending_chars` characters, and three
    endings of the same length starting at a line of other held-out documents.

    Pass 1 keeps the `cloze_max_examples` candidates first by hash (with context and true ending).
    Each candidate's distractors come from its first attempts (of `DISTRACTOR_ATTEMPTS`) that give a
    fresh ending: attempt k draws document `order[hash % n]` and a line start in it, by hash. `plan`
    draws `FIRST_ATTEMPTS` of them per candidate (nearly always enough); the pass after it cuts each
    drawn document's ending; a candidate still short of three then draws the rest, for one more pass.
    """

    def __init__(self, cfg: SuiteConfig) -> None:
        self.cfg, self.pick = cfg, Smallest(cfg.cloze_max_examples)
        self.chosen: list[tuple[str, int, str, str]] = []  # (doc_hash, offset, context, true ending)
        self.endings: dict[int, list[str]] = {}  # candidate -> its distractors, once decided
        self.drawn = 0  # attempts drawn so far, per undecided candidate
        self.wanted: dict[str, list[tuple[int, int]]] = {}  # doc_hash -> (candidate, attempt) drawing it
        self.pieces: dict[tuple[int, int], tuple[str, str | None]] = {}  # -> (doc_hash, ending or None)

    def add(self, doc: HeldoutDoc) -> None:
        ending = self.cfg.cloze_ending_chars
        for point, context in cloze_points(doc, self.cfg):
            key = (unit(self.cfg.salt, "cloze", doc.doc_hash, point), doc.doc_hash, point)
            self.pick.add(key, (doc.doc_hash, point, context, doc.text[point : point + ending]))

    def plan(self, order: list[str]) -> bool:
        if not self.drawn:
            self.chosen = self.pick.first()
        undecided = [i for i in range(len(self.chosen)) if i not in self.endings and not self._decide(i)]
        self.wanted = {}
        while undecided and not self.wanted and self.drawn < DISTRACTOR_ATTEMPTS:
            first = self.drawn
            self.drawn = FIRST_ATTEMPTS if not first else DISTRACTOR_ATTEMPTS
            for i in undecided:
                digest, point = self.chosen[i][:2]
                for attempt in range(first, self.drawn):
                    other = order[draw(self.cfg.salt, "cloze-doc", digest, point, attempt) % len(order)]
                    if other != digest:
                        self.wanted.setdefault(other, []).append((i, attempt))
        return bool(self.wanted)

    def see(self, doc: HeldoutDoc) -> None:
        wanted = self.wanted.get(doc.doc_hash)
        if not wanted:
            return
        ending = self.cfg.cloze_ending_chars
        starts = [s for s in doc.line_starts if s + ending <= len(doc.text)]
        for i, attempt in wanted:
            piece = None
            if starts:
                digest, point = self.chosen[i][:2]
                start = starts[draw(self.cfg.salt, "cloze-start", digest, point, attempt) % len(starts)]
                piece = doc.text[start : start + ending]
            self.pieces[i, attempt] = (doc.doc_hash, piece)

    def _decide(self, i: int, final: bool = False) -> bool:
        """Whether candidate i's distractors are decided by the attempts drawn so far (three found,
        or every attempt drawn: then it has fewer and is dropped); its pieces are let go once it is.
        `final`: no more attempts will be drawn."""
        digest, _, _, true = self.chosen[i]
        chosen, used = [], {digest}
        for attempt in range(self.drawn):
            if len(chosen) == 3:
                break
            if (i, attempt) not in self.pieces:  # the example's own document
                continue
            other, text = self.pieces[i, attempt]
            if other in used or text is None:
                continue
            if text in chosen or text == true or not _usable(text, max(1, len(true) // 4)):
                continue
            chosen.append(text)
            used.add(other)
        if len(chosen) < 3 and self.drawn < DISTRACTOR_ATTEMPTS and not final:
            return False
        self.endings[i] = chosen
        for attempt in range(self.drawn):
            self.pieces.pop((i, attempt), None)
        return True

    def rows(self) -> list[dict]:
        rows = []
        for i, (digest, point, context, true) in enumerate(self.chosen):
            if i not in self.endings:
                self._decide(i, final=True)
            endings = list(self.endings[i])
            if len(endings) < 3:
                continue
            label = draw(self.cfg.salt, "cloze-label", digest, point) % 4
            endings.insert(label, true)
            rows.append({"context": context, "endings": endings, "label": label, "doc_hash": digest, "offset": point})
        rows.sort(key=lambda r: (r["doc_hash"], r["offset"]))
        return rows


def check_cloze(rows: list[dict], n_docs: int, cfg: SuiteConfig, fraction: float | None = None) -> None:
    if len(rows) < cfg.min_test_examples:
        raise UserError(
            f"held-out split too small for cloze: {len(rows)} examples from {n_docs} held-out documents, "
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


class ClassifyRows:
    """Label a snippet with its document's label; documents are split per class by hash, so none
    feeds two splits.

    Pass 1 ranks each class's documents by hash; `plan` keeps the classes and, per class, the two
    ranks where test ends and validation ends (the documents' ranks themselves are let go); pass 2
    places each document by its rank key and keeps, per class and split, the snippets first by hash
    up to the split's cap.
    """

    def __init__(self, cfg: SuiteConfig, fraction: float | None = None) -> None:
        self.cfg, self.fraction = cfg, fraction
        self.members: dict[str, list[tuple[float, str]]] = {}  # label -> (rank key, doc_hash), until `plan`
        self.error: UserError | None = None
        self.classes: list[str] = []
        self.bounds: dict[str, tuple] = {}  # label -> first rank key past test, past validation
        self.doc_counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
        self.dropped: list[str] = []
        self.pools: dict[tuple[str, str], Smallest] = {}
        self.n_labelled = 0
        self.planned = False

    def add(self, doc: HeldoutDoc) -> None:
        if doc.label not in (None, ""):
            self.members.setdefault(doc.label, []).append(self._rank(doc.doc_hash))

    def _rank(self, digest: str) -> tuple[float, str]:
        return unit(self.cfg.salt, "split", digest), digest

    def plan(self, order: list[str]) -> bool:
        if self.planned:
            return False  # one pass of snippets is all it needs
        cfg, members = self.cfg, self.members
        self.members, self.planned = {}, True
        if not members:
            self.error = UserError(
                "classify: the held-out documents carry no label: set data.sources[].label_field to the field "
                "holding each document's class (the python-stdlib source labels files by top-level package), "
                "or drop classify from eval.suites.enabled"
            )
            return False
        doc_counts = {label: len(docs) for label, docs in members.items()}
        ranked = sorted(doc_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [label for label, n in ranked if n >= cfg.classify_min_docs_per_class][: cfg.classify_max_classes]
        if len(kept) < 2:
            top = ", ".join(f"{label}: {n}" for label, n in ranked[:5])
            self.error = UserError(
                f"classify needs at least 2 classes with {cfg.classify_min_docs_per_class} or more held-out "
                f"documents (eval.suites.classify_min_docs_per_class), found {len(kept)} among {len(doc_counts)} "
                f"labels ({top}): raise data.split.heldout_fraction (and rerun the data stage), lower "
                "eval.suites.classify_min_docs_per_class, or use a corpus with more labels"
            )
            return False
        self.classes = sorted(kept)
        self.dropped = sorted(set(doc_counts) - set(kept))
        self.n_labelled = sum(doc_counts.values())
        for label in self.classes:
            docs = sorted(members.pop(label))
            n = len(docs)
            test = min(n, max(1, round(n * cfg.classify_test_fraction)))
            validation = min(n, test + max(1, round(n * cfg.classify_validation_fraction))) - test
            past = test + validation
            self.bounds[label] = (docs[test] if test < n else _LAST, docs[past] if past < n else _LAST)
            counts = {"train": n - past, "validation": validation, "test": test}
            for split in SPLITS:
                self.doc_counts[split][label] = counts[split]
        caps = {"train": cfg.classify_train_max_per_class, "validation": cfg.classify_max_per_class}
        caps["test"] = cfg.classify_max_per_class
        self.pools = {(label, split): Smallest(caps[split]) for label in self.classes for split in SPLITS}
        return True

    def see(self, doc: HeldoutDoc) -> None:
        bounds = self.bounds.get(doc.label)
        if bounds is None:
            return
        rank = self._rank(doc.doc_hash)
        pool = self.pools[doc.label, "test" if rank < bounds[0] else "validation" if rank < bounds[1] else "train"]
        for start, text in snippets(doc, self.cfg):
            pool.add(
                (unit(self.cfg.salt, "snippet", doc.doc_hash, start), doc.doc_hash, start), (doc.doc_hash, start, text)
            )

    def rows(self) -> tuple[dict[str, list[dict]], dict]:
        """(rows per split, class info)."""
        if self.error is not None:
            raise self.error
        cfg, classes = self.cfg, self.classes
        class_id = {label: i for i, label in enumerate(classes)}
        rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for label in classes:
            for split in SPLITS:
                for digest, start, text in self.pools[label, split].first():
                    row = {"text": text, "label": label, "label_id": class_id[label], "doc_hash": digest}
                    rows[split].append({**row, "offset": start})
        for split in rows:
            rows[split].sort(key=lambda r: (r["label_id"], r["doc_hash"], r["offset"]))
        info = self._info(rows)
        if len(rows["test"]) < cfg.min_test_examples:
            test_docs = sum(info["docs"]["test"].values())
            raise UserError(
                f"held-out split too small for classify: {len(rows['test'])} test examples from {test_docs} test "
                f"documents ({self.n_labelled} labelled held-out documents, {len(classes)} classes), need at least "
                f"{cfg.min_test_examples}: {heldout_hint(len(rows['test']), cfg.min_test_examples, self.fraction)}, "
                "or raise eval.suites.classify_snippets_per_doc / classify_max_per_class"
            )
        return rows, info

    def _info(self, rows: dict[str, list[dict]]) -> dict:
        classes = self.classes
        examples = {s: {c: sum(r["label"] == c for r in rs) for c in classes} for s, rs in rows.items()}
        test = examples["test"]
        total = sum(test.values())
        return {
            "classes": classes,
            "examples": examples,
            "docs": {split: dict(self.doc_counts[split]) for split in SPLITS},
            "dropped_labels": self.dropped,
            "chance": {
                "uniform": 1.0 / len(classes),
                "majority": max(test.values()) / total if total else 0.0,
                "majority_class": max(classes, key=lambda c: (test[c], c)) if total else None,
            },
        }
