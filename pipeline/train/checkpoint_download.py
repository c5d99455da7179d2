"""Per-rank checkpoint download for a resume: each rank fetches only the files it loads (its own ZeRO
partition plus the shared files, or its share of a universal-format copy), once per node,
verifying sha256 while streaming (see `checkpoint.py` for the layout and the protocol).

A node keeps its bookkeeping beside the downloaded folders, in `<node dir>/.state/<folder>/`: a
lock per file (the first rank of the node downloads it, the others wait and reuse it) and a
`.verified` marker holding the sha256 the file was verified against. Only the marker makes a local
file count: a file left by a killed download or conversion, or verified against another listing,
is fetched again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from ..keys import CheckpointId, RunKeys, as_checkpoint, safe_relative
from ..records import CommittedFile
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

    Returns the bytes this rank downloaded. A file whose content does not match `COMMITTED` raises
    `ResumeError` (and is not left in place).
    """
    checkpoint = as_checkpoint(checkpoint)
    entries = [e for e in read_committed(store, keys, checkpoint).files if needed_by(e.name, dp_rank, everything)]

    def corrupt(error: ValueError) -> Exception:
        return ResumeError(f"checkpoint {checkpoint.tag} of run {keys.run!r} is corrupt: {error}")

    key = lambda name: keys.checkpoint_file(checkpoint, name)  # noqa: E731
    return download_verified(store, entries, key, node_dir, checkpoint.tag, corrupt)


def download_verified(
    store: ObjectStore,
    entries: Iterable[CommittedFile],
    key: Callable[[str], str],
    node_dir: Path,
    folder: str,
    mismatch: Callable[[ValueError], Exception],
) -> int:
    """Download each listed file (stored at `key(name)`) into `node_dir/<folder>/<name>` unless this
    node already holds it verified; returns the bytes downloaded. A file whose size or sha256 does
    not match its entry is not left in place and raises `mismatch(error)`."""
    downloaded = 0
    for entry in entries:
        name = safe_relative(entry.name)
        path = node_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Locks and markers live beside the folder, not in it: DeepSpeed and ds_to_universal read it.
        bookkeeping = node_dir / ".state" / folder / name
        with node_lock(bookkeeping.with_name(bookkeeping.name + ".lock")):
            done = bookkeeping.with_name(bookkeeping.name + ".verified")
            if done.exists() and done.read_text() == entry.sha256:
                continue
            try:
                store.download_file(key(entry.name), path, entry.sha256, entry.size)
            except ValueError as error:
                raise mismatch(error) from None
            done.write_text(entry.sha256)
            downloaded += entry.size
    return downloaded


def mark_verified(node_dir: Path, folder: str, entries: Iterable[CommittedFile]) -> None:
    """Files this node wrote itself into `node_dir/<folder>/` with the listed content (a conversion
    hashed them while uploading): its ranks use them instead of downloading them."""
    for entry in entries:
        done = node_dir / ".state" / folder / f"{safe_relative(entry.name)}.verified"
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(entry.sha256)


def forget(node_dir: Path, folder: str) -> None:
    """Drop `node_dir/<folder>/` and its markers (a conversion replaces it)."""
    shutil.rmtree(node_dir / ".state" / folder, ignore_errors=True)
    shutil.rmtree(node_dir / folder, ignore_errors=True)


def remove_node_copy(node_dir: Path) -> None:
    shutil.rmtree(node_dir, ignore_errors=True)
