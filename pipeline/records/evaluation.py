"""Evaluation records: the suites index (`suites.json`, next to a dataset version's downstream
suites) and a checkpoint's eval results (`runs/<run>/eval/<name>/results.json`).

Both are create-if-absent: two builders (evaluators) of the same thing write identical content,
and the loser reads the winner's document instead of overwriting it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import Field

from ..keys import RunKeys, safe_relative
from ..storage import ObjectStore
from .base import Record

INDEX = "suites.json"


class Chance(Record):
    """What guessing scores: uniform and majority accuracy (cloze, classify), or, for the generative
    suites, `baselines` {metric: {baseline: score}} of trivial answers (copy the prompt's last line,
    the most frequent train answer line, the function name as words) scored like a model."""

    uniform: float | None = None
    majority: float | None = None
    baselines: dict[str, dict[str, float]] | None = None


class SuiteTask(Record):
    """One lm-eval task of the suites: its files, counts per split and chance levels."""

    suite: str
    counts: dict[str, int] = Field(default_factory=dict)
    doc_hashes: dict[str, list[str]] = Field(default_factory=dict)
    chance: Chance | None = None
    classes: list[str] | None = None  # classify only
    # generative suites also record `docs` (documents per split) and `generation` (until, max_gen_toks)


class SuiteFile(Record):
    bytes: int
    sha256: str


class SuiteIndex(Record):
    format: int
    dataset: str
    version: int
    tokenizer_sha256: str | None = None
    heldout_docs: int
    prefix: str
    uri: str
    settings_id: str
    settings: dict[str, Any]
    tag: str
    tasks: dict[str, SuiteTask]
    files: dict[str, SuiteFile]

    @staticmethod
    def key(prefix: str) -> str:
        return f"{prefix}/{INDEX}"

    @classmethod
    def load(cls, store: ObjectStore, prefix: str) -> SuiteIndex | None:
        try:
            return cls.from_bytes(store.read(cls.key(prefix)))
        except FileNotFoundError:
            return None

    def create(self, store: ObjectStore) -> SuiteIndex:
        """Publish the index (create-if-absent); returns the one that is stored."""
        if store.create(self.key(self.prefix), self.to_bytes()):
            return self
        return SuiteIndex.from_bytes(store.read(self.key(self.prefix)))  # a concurrent builder published first


class EvalLineage(Record):
    checkpoint_uri: str
    run: str
    kind: str
    dataset: str
    dataset_version: int
    tokenizer_sha256: str | None = None


class EvalSuites(Record):
    uri: str
    settings_id: str
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    classes: list[str] | None = None


class EvalResults(Record):
    """lm-eval's results of one checkpoint (metrics with stderr per task) plus Sora's lineage."""

    name: str
    kind: str
    results: dict[str, dict[str, Any]]
    higher_is_better: dict[str, dict[str, Any]] = Field(default_factory=dict)
    chance: dict[str, Chance | None] = Field(default_factory=dict)
    suites: EvalSuites | None = None
    lineage: EvalLineage
    lm_eval: dict[str, Any] = Field(default_factory=dict)
    # lm-eval's own bookkeeping, stored under lm-eval's names
    groups: dict[str, Any] = Field(default_factory=dict)
    n_samples: dict[str, Any] = Field(default_factory=dict, alias="n-samples")
    n_shot: dict[str, Any] = Field(default_factory=dict, alias="n-shot")
    versions: dict[str, Any] = Field(default_factory=dict)
    configs: dict[str, Any] = Field(default_factory=dict)

    @staticmethod
    def key(run: str, name: str) -> str:
        return f"{RunKeys(run).eval}/{safe_relative(name)}/results.json"

    @classmethod
    def from_raw(cls, document: dict[str, Any], default: Callable[[Any], Any]) -> EvalResults:
        """From lm-eval's output, whose values may not be JSON (numpy scalars, task callables):
        `default` turns those into JSON values, as lm-eval's own writer does."""
        return cls.from_bytes(json.dumps(document, default=default))

    @classmethod
    def load(cls, store: ObjectStore, run: str, name: str) -> EvalResults | None:
        try:
            return cls.from_bytes(store.read(cls.key(run, name)))
        except FileNotFoundError:
            return None

    @classmethod
    def load_all(cls, store: ObjectStore, run: str) -> dict[str, EvalResults]:
        """Every stored result of the run, by evaluation name."""
        found: dict[str, EvalResults] = {}
        prefix = RunKeys(run).eval + "/"
        for key in store.list(RunKeys(run).eval):
            if key.endswith("/results.json"):
                found[key[len(prefix) :].removesuffix("/results.json")] = cls.from_bytes(store.read(key))
        return found

    def create(self, store: ObjectStore) -> EvalResults:
        """Store (create-if-absent); returns the one that is stored (another evaluator's, if it won)."""
        key = self.key(self.lineage.run, self.name)
        return self if store.create(key, self.to_bytes()) else EvalResults.from_bytes(store.read(key))
