"""The evaluation task files decontamination indexes (the `tasks` of a `decontaminate` filter).

An entry is an lm-eval task YAML or a data file. A YAML names its task (`task:`) and its data:
`dataset_path: json` or `parquet` with `dataset_kwargs.data_files` (a name, a list, or a mapping
of split to either). lm-eval hands those names to Hugging Face `datasets`, which reads them
relative to the working directory, while Sora's stored suites name them relative to the suites
folder (`suites/build.py`, one level above each YAML): a relative name is looked for next to the
YAML, then one folder up, then as given. `include:` is followed (lm-eval's inheritance: the
including file's keys win); `!function` and other tags read as null. Every file of every split is
indexed, few-shot and training splits too: they are what a benchmark shows the model. A task
whose data is not a local or s3 file (a Hugging Face hub dataset) cannot be read offline: it is an
error, not a silent gap in the decontamination.

A data file (`.jsonl`, `.json`, `.parquet`; json also `.gz`) is a task named by its stem. Every
string of every row is one text, nested lists and mappings included (ARC's `choices: {text: [...]}`).

Entries are local paths or URIs the storage layer opens (`s3://`, `file://`). The driver resolves
them before the build reads anything (`resolve_tasks`: a missing file is a `UserError` naming it)
and reads them when decontamination runs (`task_texts`): evaluation sets are megabytes, and
lm-eval's files usually sit on the machine that starts the build, where a Ray task on another
node could not read them.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..errors import UserError
from ..storage import StorageSettings, open_store

_DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
_YAML_SUFFIXES = (".yaml", ".yml")
_FORMATS = ("json", "parquet")  # lm-eval `dataset_path`s naming local files (read by their suffix)
_MAX_INCLUDES = 8
TEXTS_PER_BATCH = 4096  # strings handed to the hashing at once (`task_texts`)


@dataclass(frozen=True)
class EvalTask:
    """One configured entry: the task's name, the entry as configured, and its data files."""

    name: str
    entry: str
    files: tuple[str, ...]


def resolve_tasks(entries: list[str], settings: StorageSettings) -> list[EvalTask]:
    """Every entry's task and data files, checked to exist; a `UserError` names the first bad one."""
    return [_resolve(entry, settings) for entry in entries]


def _resolve(entry: str, settings: StorageSettings) -> EvalTask:
    lower = entry.lower()
    if lower.endswith(_YAML_SUFFIXES):
        return _resolve_yaml(entry, settings)
    if lower.endswith(_DATA_SUFFIXES):
        if not _exists(entry, settings):
            raise UserError(f"decontaminate: task file {entry} does not exist")
        return EvalTask(_stem(entry), entry, (entry,))
    kinds = ", ".join(_DATA_SUFFIXES)
    raise UserError(f"decontaminate: task {entry} is neither an lm-eval task YAML (.yaml) nor a data file ({kinds})")


def _resolve_yaml(entry: str, settings: StorageSettings) -> EvalTask:
    spec = _load_yaml(entry, settings)
    name = spec.get("task")
    if not isinstance(name, str):
        raise UserError(f"decontaminate: {entry} names no single `task:` (a group YAML? list its tasks' YAMLs)")
    kind = spec.get("dataset_path")
    if kind not in _FORMATS:
        raise UserError(
            f"decontaminate: task {name!r} ({entry}) reads dataset_path {kind!r}; only local or s3 data files "
            "(dataset_path: json or parquet, with dataset_kwargs.data_files) can be indexed"
        )
    names = _data_files(spec)
    if not names:
        raise UserError(f"decontaminate: task {name!r} ({entry}) has no dataset_kwargs.data_files")
    return EvalTask(name, entry, tuple(_find(rel, entry, settings, name) for rel in names))


def _load_yaml(entry: str, settings: StorageSettings, depth: int = 0) -> dict:
    """The YAML's mapping, its `include:` chain merged under it."""
    try:
        spec = yaml.load(_read(entry, settings), Loader=_TaskLoader)
    except FileNotFoundError:
        raise UserError(f"decontaminate: task file {entry} does not exist") from None
    except yaml.YAMLError as error:
        raise UserError(f"decontaminate: task file {entry} is not valid YAML: {error}") from None
    if not isinstance(spec, dict):
        raise UserError(f"decontaminate: task file {entry} is not a YAML mapping")
    include = spec.pop("include", None)
    if isinstance(include, str):
        if depth >= _MAX_INCLUDES:
            raise UserError(f"decontaminate: {entry}: more than {_MAX_INCLUDES} nested includes")
        spec = {**_load_yaml(_beside(entry, include), settings, depth + 1), **spec}
    return spec


class _TaskLoader(yaml.SafeLoader):
    """Safe YAML that reads lm-eval's `!function module.name` (and any other tag) as null."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _data_files(spec: dict) -> list[str]:
    """The data file names of a task YAML, in a stable order (split by split as written)."""
    kwargs = spec.get("dataset_kwargs") or {}
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    values = files.values() if isinstance(files, dict) else [files]
    names: list[str] = []
    for value in values:
        for name in [value] if isinstance(value, str) else value or []:
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def _find(name: str, entry: str, settings: StorageSettings, task: str) -> str:
    """Where the data file `name` of the YAML `entry` is (see the module docstring)."""
    if _absolute(name):
        candidates = [name]
    else:
        here = _parent(entry)
        candidates = [_join(here, name), _join(_parent(here), name), name]
    for candidate in candidates:
        if _exists(candidate, settings):
            return candidate
    raise UserError(f"decontaminate: data file {name!r} of task {task!r} ({entry}) not found (looked at {candidates})")


def task_texts(task: EvalTask, settings: StorageSettings, normalize: str) -> Iterator[list[str]]:
    """The task's texts (every string of every row of every file), normalized like the corpus
    (`data.normalize`), in batches of about `TEXTS_PER_BATCH`."""
    batch: list[str] = []
    for uri in task.files:
        try:
            rows = list(_rows(uri, _read(uri, settings)))
        except (ValueError, OSError, pa.ArrowException) as error:  # JSONDecodeError is a ValueError
            raise UserError(f"decontaminate: cannot read data file {uri} of task {task.name!r}: {error}") from None
        for row in rows:
            batch.extend(unicodedata.normalize(normalize, s) if normalize != "none" else s for s in _strings(row))
            if len(batch) >= TEXTS_PER_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _rows(uri: str, data: bytes) -> Iterator[object]:
    lower = uri.lower()
    if lower.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data))
        for batch in table.to_batches(max_chunksize=TEXTS_PER_BATCH):
            yield from batch.to_pylist()
        return
    text = (gzip.decompress(data) if lower.endswith(".gz") else data).decode("utf-8")
    if lower.endswith((".json", ".json.gz")):
        try:  # a JSON document (a list of rows, or rows under a key) ...
            yield json.loads(text)
            return
        except json.JSONDecodeError:
            pass  # ... or JSON lines, which `datasets`' json builder reads from .json files too
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def _strings(value: object) -> Iterator[str]:
    """Every string inside a row: its string fields, and strings in nested lists and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


# -- paths and URIs ---------------------------------------------------------------------------


def _absolute(name: str) -> bool:
    return "://" in name or name.startswith("/")


def _parent(path: str) -> str:
    """The folder of `path` ("" for a bare relative name; a bucket is its own parent)."""
    scheme, sep, rest = path.rpartition("://")
    head = rest.rstrip("/").rpartition("/")[0]
    if not head and rest.startswith("/"):
        head = "/"
    return f"{scheme}{sep}{head or rest.rstrip('/')}" if sep else head


def _join(folder: str, name: str) -> str:
    if not folder:
        return name
    if "://" in folder:
        return folder.rstrip("/") + "/" + posixpath.normpath(name)
    return posixpath.normpath(posixpath.join(folder, name))


def _beside(entry: str, name: str) -> str:
    return name if _absolute(name) else _join(_parent(entry), name)


def _stem(path: str) -> str:
    name = path.rstrip("/").rpartition("/")[2]
    for suffix in sorted(_DATA_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _store_and_key(uri: str, settings: StorageSettings):
    return open_store(_parent(uri) or ".", settings), uri.rstrip("/").rpartition("/")[2]


def _exists(uri: str, settings: StorageSettings) -> bool:
    store, key = _store_and_key(uri, settings)
    return store.exists(key)


def _read(uri: str, settings: StorageSettings) -> bytes:
    store, key = _store_and_key(uri, settings)
    return store.read(key)
