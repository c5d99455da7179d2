"""What the fine-tune driver checks about the suite it trains on, before any worker starts: that
a finished run learned from the same files (so it is still valid), that the validation split fills
one validation batch, and how many train examples `max_length` cuts.

A suite's folder is named by a hash of all suite settings plus the suites format, so adding a
generative suite or a new format moves every suite to a new folder even when a suite's own files
are byte for byte the same. A finished fine-tune is therefore compared by content: the sha256 of
its train and validation files (as the suites index records them) against the current ones.
"""

from __future__ import annotations

import hashlib

from ..config.finetune import FinetuneConfig
from ..errors import UserError
from ..records import DatasetVersion, SuiteIndex
from ..storage import ObjectStore
from .objective_base import SPLIT_FILES, FinetuneObjective

# The suite settings that size each task's validation split (named when it is too small).
VALIDATION_SETTINGS = {
    "classify": "eval.suites.classify_max_per_class or classify_validation_fraction",
    "generate": "eval.suites.gen_validation_examples or gen_validation_fraction",
}


def trained_files(store: ObjectStore, suite_prefix: str) -> dict[str, str] | None:
    """{split file: sha256} of the train and validation files under `suite_prefix`
    (`<suites folder>/<suite>`): from the folder's index (`suites.json`) when it has one, else
    hashed from the stored files (a suite written without an index); None when they are gone."""
    folder, _, suite = suite_prefix.rpartition("/")
    names = {name: f"{suite}/{name}" for name in SPLIT_FILES.values()}
    index = SuiteIndex.load(store, folder) if folder else None
    if index is not None and all(path in index.files for path in names.values()):
        return {name: index.files[path].sha256 for name, path in names.items()}
    try:
        return {name: hashlib.sha256(store.read(f"{suite_prefix}/{name}")).hexdigest() for name in names}
    except FileNotFoundError:
        return None


def same_training_data(store: ObjectStore, trained_prefix: str, suite_prefix: str) -> bool:
    """Whether the suite under `trained_prefix` (a finished run's) has the same train and validation
    files as the one under `suite_prefix`."""
    if trained_prefix == suite_prefix:
        return True
    trained = trained_files(store, trained_prefix)
    return trained is not None and trained == trained_files(store, suite_prefix)


def check_validation_size(store: ObjectStore, suite_prefix: str, ft: FinetuneConfig) -> int:
    """The validation split's example count; a UserError when it is smaller than one validation
    unit (data-parallel workers x micro-batch) at some worker count of the run: the loader would
    yield no validation batch, and early stopping would silently never act."""
    key = f"{suite_prefix}/{SPLIT_FILES['validation']}"
    count = sum(1 for line in store.read(key).decode().splitlines() if line.strip())
    splits = [ft.split(workers) for workers in ft.worker_counts]
    largest = max(splits, key=lambda split: split.data_parallel * split.micro_batch)
    unit = largest.data_parallel * largest.micro_batch
    if count < unit:
        raise UserError(
            f"the {ft.suite} suite's validation split has {count} examples, fewer than one validation batch of "
            f"{largest.data_parallel} workers x micro_batch {largest.micro_batch} = {unit}, so the fine-tune would "
            f"never validate nor stop early: lower finetune.micro_batch or finetune.workers, or raise "
            f"{VALIDATION_SETTINGS[ft.task]}"
        )
    return count


def train_truncation(objective: FinetuneObjective, store: ObjectStore, manifest: DatasetVersion) -> tuple[int, int]:
    """(train examples longer than the objective's max_length, train examples): tokenized as the
    workers tokenize them (the split is capped: thousands of rows, a fraction of a second)."""
    samples = objective.samples(store, manifest, "train")
    return samples.truncated, len(samples)
