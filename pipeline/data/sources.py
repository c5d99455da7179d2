"""Source discovery: turn configured sources into read units with fingerprints.

A read unit is one file (or one HF dataset) that a Ray task reads. Its (uri, size, version: mtime
or ETag) is what incremental refreshes diff against the latest version's source index
(`records.source_index.unindexed`). Sizes and versions
come with the listing (`ObjectStore.list_objects`: on S3 one request per 1000 keys, ETags as
versions), never from a request per file.
"""

from __future__ import annotations

import fnmatch
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..config.data import SourceConfig
from ..errors import UserError
from ..storage import StorageSettings, open_store
from ..storage.base import ListedObject

EXTENSIONS = {
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson"),
    "parquet": (".parquet",),
    "text": (".txt", ".md", ".py", ".text"),
}


@dataclass(frozen=True)
class SourceUnit:
    """One file (or one HF dataset) of a configured source: what a read task reads."""

    source_index: int
    kind: str
    root: str
    key: str
    uri: str
    size: int
    version: str
    label: str | None = None


@dataclass(frozen=True)
class UnitPart:
    """A unit, or one byte range (jsonl) / run of row groups (parquet) of it, as planned for a read
    task: `index` is the unit's position in this run's unit list, `pid` the part's id in the run,
    `part` (start, end) or None for the whole unit."""

    unit: SourceUnit
    index: int
    pid: int
    part: tuple[int, int] | None = None


def stdlib_directory() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_units(source_index: int) -> list[SourceUnit]:
    """Every .py file of this interpreter's standard library (site-packages excluded)."""
    root = stdlib_directory()
    units = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(directory) / name
            relative = path.relative_to(root)
            stat = path.stat()
            label = relative.parts[0].removesuffix(".py")
            units.append(
                _unit(source_index, "text", f"file://{root}", str(relative), stat.st_size, str(stat.st_mtime_ns), label)
            )
    return units


def _unit(index: int, kind: str, root: str, key: str, size: int, version: str, label: str | None = None) -> SourceUnit:
    return SourceUnit(index, kind, root, key, f"{root}/{key}", size, version, label)


def _split_glob(uri: str) -> tuple[str, str | None]:
    """('s3://b/dir', '*.jsonl') for a glob in the last component, else (uri, None)."""
    head, _, tail = uri.rstrip("/").rpartition("/")
    if any(ch in tail for ch in "*?["):
        return head, tail
    return uri, None


def list_units(source: SourceConfig, index: int, settings: StorageSettings) -> list[SourceUnit]:
    """Read units of one source, sorted; raises `UserError` if the source is missing or empty."""
    if source.kind == "python-stdlib":
        return _stdlib_units(index)
    if source.kind == "hf_hub":
        return [_unit(index, "hf_hub", "hf://", source.uri, 0, "hub")]
    if source.kind == "hf_disk":
        path = Path(urlparse(source.uri).path if source.uri.startswith("file://") else source.uri)
        if not path.exists():
            raise UserError(f"source {source.uri} not found")
        state = sorted(path.rglob("*.arrow")) + sorted(path.rglob("state.json"))
        version = ",".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in state)
        return [_unit(index, "hf_disk", f"file://{path.parent}", path.name, 0, version)]

    location, pattern = _split_glob(source.uri)
    store = open_store(location, settings)
    listed = store.list_objects("")  # sizes and versions from the listing: no request per file
    if pattern is None and [o.key for o in listed] == [""]:
        # A single file: the store is its parent directory.
        parent, _, name = store.root_uri.rpartition("/")
        store, listed = open_store(parent, settings), [ListedObject(name, listed[0].size, listed[0].version)]
    else:
        listed = [o for o in listed if o.key.lower().endswith(EXTENSIONS[source.kind])]
        if pattern is not None:
            listed = [o for o in listed if fnmatch.fnmatch(o.key.rpartition("/")[2], pattern)]
    if not listed:
        raise UserError(f"source {source.uri} not found or has no {source.kind} files")
    return [_unit(index, source.kind, store.root_uri, o.key, o.size, o.version) for o in listed]


def list_all_units(sources: list[SourceConfig], settings: StorageSettings) -> list[SourceUnit]:
    units: list[SourceUnit] = []
    for index, source in enumerate(sources):
        units.extend(list_units(source, index, settings))
    return units
