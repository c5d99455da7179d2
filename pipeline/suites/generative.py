"""The generative suites' rows (lm-eval `generate_until` tasks): prompt, true answer, and the trivial
baselines scored with the same metrics as a model.

    code_body      prompt: a function's decorators, signature and docstring (dedented to column 0), up to
                   the docstring's closing quotes (functions with a longer prompt than
                   `code_body_prompt_chars` are skipped); answer: a newline and the first
                   `code_body_max_lines` lines of its body (<= code_body_max_chars)
    docstring      prompt: the function without its docstring (<= docstring_code_chars, whole lines)
                   and the cue `<name>.__doc__ = \"\"\"`; answer: the docstring's first line
    continuation   prompt: about `continuation_context_chars` of whole lines of any document, without
                   the newline that ends the last (nor blank lines before it); answer: those newlines
                   and the next `continuation_chars` characters, cut at a line or word end

Prompts end where the text's own tokenization has a token boundary. A byte-level BPE merges a newline
with the indentation after it ('\u010a\u0120\u0120\u0120'), so a prompt ending in a bare newline
ends in a token the model hardly saw in training: it answers with more bare newlines, which the stop
sequences cut to ''. So the newline belongs to the answer.

Every row has `complete`: whether its answer is the whole of what it answers (code_body: the entire
body fit the caps; docstring: the docstring's whole first line; continuation: never), so generative
fine-tuning ends only complete answers with EOS.

Every document feeds one split, by the salted hash of its `doc_hash` (as classify splits its
documents), so no document gives examples to two splits. Pass 1 is all a suite needs: each document
offers its examples (at most `gen_per_doc`, first by hash), ranked by the document's hash first
(`(unit(salt, suite, doc_hash), doc_hash, offset)`), and each split keeps the first by rank up to its
cap (`Smallest`), so what a builder holds is bounded by the caps, never the split's text.

Parsing is the dear part at scale (~4 MB/s), so a document is parsed only when it may matter: the
code suites skip documents above `gen_max_doc_bytes` and those without a `def ` and a triple quote,
and once a split's pool is full, a document ranked after its worst kept example is skipped before
it is parsed (none of its examples could be kept: the rows are those of parsing everything). The
documents parsed then grow with the log of the split's size, not with it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable

from ..config.evaluate import CODE_SUITES, SuiteConfig
from ..errors import UserError
from .code import documented_functions, may_have_functions, name_words
from .heldout import HeldoutDoc, unit
from .metrics import METRICS
from .rows import SPLITS, Smallest, _evenly, _usable, heldout_hint

METRICS_OF = {
    "code_body": ("first_line_exact", "sentence_chrf", "rouge_l"),
    "docstring": ("rouge_l",),
    "continuation": ("rouge_l",),
}
# Greedy decoding stops at the first of these (lm-eval adds the EOS token). Prompts are dedented to
# column 0, so a body ends where a line starts at column 0 with a new definition.
STOP = {
    "code_body": ["\ndef ", "\nclass ", "\nasync def ", "\n@", "\nif __name__", "\n\n\n"],
    "docstring": ['"""', "\n"],
    "continuation": ["\n\n\n"],
}
DOC_CUE = '\n{name}.__doc__ = """'  # after the function: a real Python way to set its docstring


def split_of(cfg: SuiteConfig, digest: str) -> str:
    """The split a document's generative examples go to, by the salted hash of its `doc_hash`."""
    rank = unit(cfg.salt, "split", digest)
    if rank < cfg.gen_test_fraction:
        return "test"
    return "validation" if rank < cfg.gen_test_fraction + cfg.gen_validation_fraction else "train"


def _whole_lines(lines: list[str], max_chars: int, max_lines: int | None = None) -> list[str]:
    """The first lines of `lines` whose text (joined by newlines) stays within `max_chars`."""
    kept, size = [], 0
    for line in lines[:max_lines]:
        size += len(line) + 1
        if size > max_chars + 1:
            break
        kept.append(line)
    return kept


def code_body_examples(doc: HeldoutDoc, cfg: SuiteConfig) -> list[tuple[int, dict]]:
    examples = []
    for function in documented_functions(doc.text):
        prompt = "\n".join(function.header + function.docstring_lines)  # ends with the closing quotes
        if len(prompt) > cfg.code_body_prompt_chars:
            continue  # a long docstring would crowd the answer out of a fine-tuning window
        body = function.body
        while body and not body[0].strip():
            body = body[1:]
        kept = _whole_lines(body, cfg.code_body_max_chars, cfg.code_body_max_lines)
        answer = "\n".join(kept).rstrip()
        if not answer.strip():
            continue
        row = {"prompt": prompt, "answer": "\n" + answer, "name": function.name, "complete": len(kept) == len(body)}
        examples.append((function.line, row))
    return examples


def docstring_examples(doc: HeldoutDoc, cfg: SuiteConfig) -> list[tuple[int, dict]]:
    examples = []
    for function in documented_functions(doc.text):
        code = _whole_lines(function.header + function.body, cfg.docstring_code_chars)
        if len(code) <= len(function.header) or not "".join(code[len(function.header) :]).strip():
            continue  # the header alone fills the budget: no body left to summarize
        answer = function.summary[: cfg.docstring_max_chars]
        if len(function.summary) > cfg.docstring_max_chars and " " in answer:
            answer = answer[: answer.rfind(" ")]
        if len(answer) < 8:
            continue
        prompt = "\n".join(code).rstrip() + "\n" + DOC_CUE.format(name=function.name)
        row = {"prompt": prompt, "answer": answer, "name": function.name, "complete": answer == function.summary}
        examples.append((function.line, row))
    return examples


def continuation_examples(doc: HeldoutDoc, cfg: SuiteConfig) -> list[tuple[int, dict]]:
    size, context_chars, text = cfg.continuation_chars, cfg.continuation_context_chars, doc.text
    starts = doc.line_starts
    minimum = max(1, size // 4)
    points = [p for p in starts if p >= min(context_chars, len(text) // 2) and p + size <= len(text)]
    examples = []
    for point in _evenly(points, cfg.gen_per_doc * 2):  # a few spares for those cut below
        answer = text[point : point + size]
        cut = answer.rfind("\n")
        if cut < size // 2:  # no line end in the second half: cut at the last word end
            cut = max(answer.rfind(" "), answer.rfind("\t"))
        answer = answer[:cut].rstrip() if cut > size // 2 else answer.rstrip()
        first = starts[bisect_left(starts, point - context_chars)]  # whole lines, about context_chars
        prompt = text[first:point].rstrip()  # the newline ending it (and blank lines before) start the answer
        answer = text[first + len(prompt) : point] + answer
        if first < point and _usable(answer, minimum) and _usable(prompt, minimum):
            examples.append((point, {"prompt": prompt, "answer": answer, "complete": False}))
    return examples


EXAMPLES: dict[str, Callable[[HeldoutDoc, SuiteConfig], list[tuple[int, dict]]]] = {
    "code_body": code_body_examples,
    "docstring": docstring_examples,
    "continuation": continuation_examples,
}


def last_line(prompt: str) -> str:
    return next((line for line in reversed(prompt.splitlines()) if line.strip()), "")


def most_frequent_line(rows: list[dict]) -> str | None:
    """The most frequent non-blank answer line of `rows` (ties: the smallest), None without rows."""
    counts = Counter(line.strip() for row in rows for line in row["answer"].splitlines() if line.strip())
    return min(counts, key=lambda line: (-counts[line], line)) if counts else None


def baselines(suite: str, splits: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """{metric: {baseline: mean score on test}}: trivial answers scored with the suite's own metrics."""
    frequent = most_frequent_line(splits["train"]) or most_frequent_line(splits["validation"])
    guesses: dict[str, Callable[[dict], str]] = {}
    if suite == "docstring":
        guesses["name_words"] = lambda row: name_words(row["name"])
    else:
        guesses["copy_last_line"] = lambda row: last_line(row["prompt"])
    if frequent is not None:
        guesses["most_frequent_line"] = lambda row: frequent
    test = splits["test"]
    return {
        metric: {
            name: sum(METRICS[metric](guess(row), row["answer"]) for row in test) / len(test)
            for name, guess in guesses.items()
        }
        for metric in METRICS_OF[suite]
    }


class GenerativeRows:
    """One generative suite's rows: single pass, per split the capped first examples by rank."""

    def __init__(self, suite: str, cfg: SuiteConfig, fraction: float | None = None) -> None:
        self.suite, self.cfg, self.fraction = suite, cfg, fraction
        caps = {"train": cfg.gen_train_examples, "validation": cfg.gen_validation_examples}
        caps["test"] = cfg.gen_test_examples
        self.pools = {split: Smallest(caps[split]) for split in SPLITS}
        # Documents that may offer examples (past the cheap checks), per split: whatever the order
        # they come in, unlike how many were parsed (`parsed`, a measure of the build's cost).
        self.docs = {split: 0 for split in SPLITS}
        self.seen = self.parsed = 0

    def add(self, doc: HeldoutDoc) -> None:
        self.seen += 1
        cfg = self.cfg
        if self.suite in CODE_SUITES and (
            not may_have_functions(doc.text) or len(doc.text.encode()) > cfg.gen_max_doc_bytes
        ):
            return
        split = split_of(cfg, doc.doc_hash)
        self.docs[split] += 1
        rank, pool = unit(cfg.salt, self.suite, doc.doc_hash), self.pools[split]
        if pool.bound is not None and rank > pool.bound[0]:
            return  # ranked after every example the full pool keeps: not worth parsing
        self.parsed += 1
        offered = EXAMPLES[self.suite](doc, cfg)
        chosen = sorted((unit(cfg.salt, self.suite, doc.doc_hash, at), at, row) for at, row in offered)
        for _, at, row in chosen[: cfg.gen_per_doc]:
            pool.add((rank, doc.doc_hash, at), {**row, "doc_hash": doc.doc_hash, "offset": at})

    def plan(self, order: list[str]) -> bool:
        return False  # pass 1 kept everything its rows need

    def rows(self) -> tuple[dict[str, list[dict]], dict]:
        """(rows per split, info: candidate documents per split and the baselines)."""
        cfg, suite = self.cfg, self.suite
        if suite != "continuation" and not any(pool.items for pool in self.pools.values()):
            raise UserError(
                f"{suite}: none of the {self.seen} held-out documents has a Python function with a docstring "
                f"(is the corpus code?): drop {suite} from eval.suites.enabled or use a code corpus "
                "(data.sources[].content: code)"
            )
        splits = {split: self.pools[split].first() for split in SPLITS}
        for rows in splits.values():
            rows.sort(key=lambda r: (r["doc_hash"], r["offset"]))
        need = min(cfg.gen_min_test_examples, cfg.gen_test_examples)
        if len(splits["test"]) < need:
            raise UserError(
                f"held-out split too small for {suite}: {len(splits['test'])} test examples from "
                f"{self.docs['test']} test documents ({self.seen} held-out documents), need at least {need}: "
                f"{heldout_hint(len(splits['test']), need, self.fraction, 'gen_min_test_examples')}"
            )
        return splits, {"docs": dict(self.docs), "baselines": baselines(suite, splits)}
