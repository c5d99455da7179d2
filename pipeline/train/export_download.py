"""A run's HF export copied once per node: the ranks of a node share one local copy (the first
downloads it under the node lock, the others wait and reuse it). Fine-tuning loads the pretrained
export from it, distillation its frozen teacher.

Only a complete export is copied (its `config.json` listed), and the copy is checked against what
was listed: an export rewritten while it downloads (a re-export deletes `config.json` first, then
every file) would otherwise leave a mix of two exports on the node, marked complete."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..errors import UserError
from ..storage import ObjectStore
from .node_lock import node_lock

INFO = "sora_export.json"
ATTEMPTS = 2  # a rewrite seen once is retried once (a new listing, a new folder), then it is an error


def download_export(store: ObjectStore, prefix: str, node_dir: Path, label: str) -> Path:
    """The export under `prefix`, downloaded once per node (sizes verified) into
    `node_dir/<label>-<fingerprint>`. The folder is named by what it holds: the export's URI,
    every file's size and its `sora_export.json` (run, step, val loss), so another store, or a
    re-export under the same run name (`--restart`), gets a folder of its own instead of a stale copy.
    A UserError when the export has no `config.json` (incomplete, or being rewritten), or changed
    while it was copied, twice."""
    for _ in range(ATTEMPTS):
        target = _download(store, prefix, node_dir, label)
        if target is not None:
            return target
    raise UserError(
        f"export {store.uri(prefix)} changed while it was downloaded, {ATTEMPTS} times: it is being "
        "rewritten; wait until its run has finished exporting, then run again"
    )


def _download(store: ObjectStore, prefix: str, node_dir: Path, label: str) -> Path | None:
    """One attempt: the folder of a complete, consistent copy, or None when the export changed meanwhile."""
    sizes = store.list_sizes(prefix)
    if f"{prefix}/config.json" not in sizes or f"{prefix}/{INFO}" not in sizes:
        raise UserError(
            f"export {store.uri(prefix)} is incomplete (no config.json or {INFO}): it is being rewritten or "
            "its run never finished exporting; run that run to its last step, then run again"
        )
    info = store.read(f"{prefix}/{INFO}")
    fingerprint = hashlib.sha256(store.uri(prefix).encode())
    for key in sorted(sizes):
        fingerprint.update(f"{key}\0{sizes[key]}\0".encode())
    fingerprint.update(info)
    target = node_dir / f"{label}-{fingerprint.hexdigest()[:16]}"
    with node_lock(target.with_name(target.name + ".lock")):
        done = target / ".complete"
        if done.exists():
            return target
        try:
            for key in sorted(sizes):
                store.download_file(key, target / key.rsplit("/", 1)[-1], None, sizes[key])
        except (FileNotFoundError, ValueError):  # a file deleted or rewritten under us
            shutil.rmtree(target, ignore_errors=True)
            return None
        if (target / INFO).read_bytes() != info or _read_or_none(store, f"{prefix}/{INFO}") != info:
            shutil.rmtree(target, ignore_errors=True)  # another export's lineage: not what was fingerprinted
            return None
        done.touch()
    return target


def _read_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.read(key)
    except FileNotFoundError:  # deleted by a re-export that started meanwhile
        return None
