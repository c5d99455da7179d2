"""A run's HF export copied once per node: the ranks of a node share one local copy (the first
downloads it under the node lock, the others wait and reuse it). Fine-tuning loads the pretrained
export from it, distillation its frozen teacher."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..storage import ObjectStore
from .node_lock import node_lock


def download_export(store: ObjectStore, prefix: str, node_dir: Path, label: str) -> Path:
    """The export under `prefix`, downloaded once per node (sizes verified) into
    `node_dir/<label>-<fingerprint>`. The folder is named by what it holds: the export's URI,
    every file's size and its `sora_export.json` (run, step, val loss), so another store, or a
    re-export under the same run name (`--restart`), gets a folder of its own instead of a stale copy."""
    sizes = {key: store.size(key) for key in sorted(store.list(prefix))}
    fingerprint = hashlib.sha256(store.uri(prefix).encode())
    for key, size in sizes.items():
        fingerprint.update(f"{key}\0{size}\0".encode())
    fingerprint.update(store.read(f"{prefix}/sora_export.json"))
    target = node_dir / f"{label}-{fingerprint.hexdigest()[:16]}"
    with node_lock(target.with_name(target.name + ".lock")):
        done = target / ".complete"
        if not done.exists():
            for key, size in sizes.items():
                store.download_file(key, target / key.rsplit("/", 1)[-1], None, size)
            done.touch()
    return target
