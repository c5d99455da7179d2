"""Call a function each time a top-level package has been imported, while `calling_after_imports` is active.

Some libraries set up their logging when imported: `import torch` adds a terminal handler to the
`torch` logger, DeepSpeed to its `DeepSpeed` logger, and their warnings print through those at once
(torch's pytree deprecation notes when transformers imports torchao). Sora imports such libraries
inside its commands, so `console_log` must see their handlers as soon as they exist, not at a
fixed point of each command. A finder first on `sys.meta_path` lets the normal finders locate a
top-level package, then wraps that one module's loader so the function runs after the package's
code. Submodules, built-in and frozen modules and namespace packages are left alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, after: Callable[[], None]) -> None:
        self.after = after
        self.finding: set[str] = set()  # names this finder is looking up (it is on sys.meta_path too)

    def find_spec(self, name, path=None, target=None):
        if path is not None or "." in name or name in self.finding:
            return None
        self.finding.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding.discard(name)
        loader = spec.loader if spec else None
        # A loader class (built-in, frozen) serves every module: only a per-module loader is wrapped.
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec
        execute, after = loader.exec_module, self.after

        def exec_module(module):
            execute(module)
            after()

        loader.exec_module = exec_module
        return spec


@contextmanager
def calling_after_imports(after: Callable[[], None]) -> Iterator[None]:
    finder = _AfterImport(after)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
