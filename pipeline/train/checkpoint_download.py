"""Per-rank checkpoint download for a resume: each rank fetches only the files it loads (its own ZeRO
partition plus the shared files), once per node, verifying sha256 while streaming (see
`checkpoint.py` for the layout and the protocol)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..keys import CheckpointId, RunKeys, as_checkpoint, safe_relative
from ..storage import ObjectStore
from .checkpoint import _PARTITION, ResumeError, read_committed
from .node_lock import node_lock


def needed_by(name: str, dp_rank: int, everything: bool) -> bool:
    """Whether a rank with data-parallel index `dp_rank` needs checkpoint file `name`."""
    match = _PARTITION.search(name)
    return everything or match is None or int(match.group(1)) == dp_rank


def download_for_rank(
    store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId, node_dir: Path, dp_rank: int, everything: bool
) -> int:
    """Download (once per node, verified) the files this rank needs into `node_dir/<tag>/`.

    Ranks of one node share `node_dir`: a per-file lock makes the first rank download a shared
    file and the others reuse it. Returns the bytes this rank downloaded. A file whose content
    does not match `COMMITTED` raises `ResumeError` (and is not left in place).
    """
    checkpoint = as_checkpoint(checkpoint)
    marker = read_committed(store, keys, checkpoint)
    downloaded = 0
    for entry in marker.files:
        if not needed_by(entry.name, dp_rank, everything):
            continue
        name = safe_relative(entry.name)
        path = node_dir / checkpoint.tag / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Locks and "verified" markers live beside the checkpoint folder, not in it: DeepSpeed and
        # ds_to_universal read that folder.
        bookkeeping = node_dir / ".state" / checkpoint.tag / name
        with node_lock(bookkeeping.with_name(bookkeeping.name + ".lock")):
            done = bookkeeping.with_name(bookkeeping.name + ".verified")
            if done.exists() and done.read_text() == entry.sha256:
                continue
            try:
                store.download_file(keys.checkpoint_file(checkpoint, entry.name), path, entry.sha256, entry.size)
            except ValueError as error:
                raise ResumeError(f"checkpoint {checkpoint.tag} of run {keys.run!r} is corrupt: {error}") from None
            done.write_text(entry.sha256)
            downloaded += entry.size
    return downloaded


def remove_node_copy(node_dir: Path) -> None:
    shutil.rmtree(node_dir, ignore_errors=True)
