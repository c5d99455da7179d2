"""Python functions with docstrings in a held-out document, found with `ast`, as the pieces the code
suites cut: header (decorators + signature), docstring, body, each dedented to the `def`'s column.

A document that is not Python, or that Python cannot parse (another dialect, a syntax error, nesting
too deep), simply has no functions. A function is used only when its docstring sits on lines of its
own and at least one statement follows it, so header, docstring and body are whole lines.

Parsing (~4 MB/s) is the dear part of the code suites, so a document is parsed only when it could
hold such a function (`may_have_functions`: a `def ` and a triple quote); a function whose docstring
is a single-quoted string is therefore not found in a document without any triple quote.
"""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class DocumentedFunction:
    name: str
    line: int  # 1-based line of its first decorator, or of `def` without one
    header: list[str]  # decorators and signature, dedented
    docstring_lines: list[str]  # the docstring's source lines, dedented
    body: list[str]  # every line after the docstring up to the function's end, dedented
    summary: str  # the docstring's first line, cleaned


# The line breaks of Python's tokenizer: `str.splitlines` also breaks at \x0c, \x1c-\x1e, \x85, \u2028
# and \u2029, which would shift every line after one of them away from the line numbers `ast` reports.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def may_have_functions(text: str) -> bool:
    """Whether `text` could hold a function with a docstring (a scan far cheaper than parsing it)."""
    return "def " in text and ('"""' in text or "'''" in text)


@lru_cache(maxsize=4)  # the two code suites look at the same document one after the other
def documented_functions(text: str) -> tuple[DocumentedFunction, ...]:
    """Every usable function with a docstring in `text`, in source order (empty when `text` is not Python)."""
    if not may_have_functions(text):
        return ()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old sources are not our business
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    lines = _LINE_BREAK.split(text)
    found = []
    for node in _statements(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = _function(node, lines)
            if function is not None:
                found.append(function)
    return tuple(sorted(found, key=lambda f: f.line))


def _statements(tree: ast.Module):
    """Every statement of `tree`, nested ones included. A `def` is a statement, so expressions need no
    visit: this skips most of the nodes `ast.walk` would (and most of its time)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, ()):
                if isinstance(child, ast.stmt):
                    stack.append(child)
                elif isinstance(child, ast.excepthandler | ast.match_case):
                    stack.extend(child.body)


def _function(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> DocumentedFunction | None:
    docstring = ast.get_docstring(node, clean=False)
    if not docstring or len(node.body) < 2:
        return None
    doc_node, first_statement = node.body[0], node.body[1]
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    doc_start, doc_end, end = doc_node.lineno, doc_node.end_lineno, node.end_lineno
    if doc_end is None or end is None or doc_start <= node.lineno or first_statement.lineno <= doc_end:
        return None  # docstring on the `def` line, or a statement sharing the docstring's last line
    # ast's column offsets count UTF-8 bytes, not characters
    before = lines[doc_start - 1].encode()[: doc_node.col_offset]
    after = lines[doc_end - 1].encode()[doc_node.end_col_offset :]
    if before.strip() or after.strip():
        return None  # the docstring shares a line with something else
    summary = inspect.cleandoc(docstring).strip().split("\n", 1)[0].strip()
    if not summary:
        return None
    indent = node.col_offset

    def dedent(chunk: list[str]) -> list[str]:
        return [line[min(indent, len(line) - len(line.lstrip())) :] for line in chunk]

    return DocumentedFunction(
        name=node.name,
        line=start,
        header=dedent(lines[start - 1 : doc_start - 1]),
        docstring_lines=dedent(lines[doc_start - 1 : doc_end]),
        body=dedent(lines[doc_end:end]),
        summary=summary,
    )


def name_words(name: str) -> str:
    """A function name as words: `read_heldout` -> 'read heldout', `getHTTPResponse` -> 'get http response'."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return " ".join(word.lower() for word in re.split(r"[\s_]+", spaced) if word)
