"""Checkpoints on object storage: `runs/<run>/checkpoints/step-XXXXXXXX/` + `COMMITTED`.

Every rank saves its DeepSpeed files into a node-local directory and uploads them (no shared
filesystem needed); rank 0 then writes `trainer_state.json` and, last, `COMMITTED`, which lists
every file with its size and sha256. A checkpoint without `COMMITTED`, or whose files do not match
it, does not exist: loading skips it with a warning and falls back to an older one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from ..storage import ObjectStore

COMMITTED = "COMMITTED"
STATE = "trainer_state.json"


def checkpoints_prefix(run: str) -> str:
    return f"runs/{run}/checkpoints"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def upload_directory(store: ObjectStore, local: Path, prefix: str) -> list[dict]:
    """Upload every file under `local` to `prefix/`; returns [{name, size, sha256}]."""
    files = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        data = path.read_bytes()
        name = path.relative_to(local).as_posix()
        store.write(f"{prefix}/{name}", data)
        files.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return files


def commit(store: ObjectStore, run: str, step: int, files: list[dict], state: dict) -> None:
    """Rank 0, after every rank uploaded: write the trainer state, then COMMITTED (last)."""
    prefix = f"{checkpoints_prefix(run)}/{tag_for(step)}"
    body = json.dumps(state, indent=1, sort_keys=True).encode()
    store.write(f"{prefix}/{STATE}", body)
    entries = files + [{"name": STATE, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}]
    store.write(f"{prefix}/{COMMITTED}", json.dumps({"step": step, "files": entries}, indent=1).encode())


def _relative(store: ObjectStore, run: str) -> list[tuple[str, str]]:
    """(tag, path inside the checkpoint) of every stored checkpoint file."""
    prefix = checkpoints_prefix(run) + "/"
    pairs = []
    for key in store.list(checkpoints_prefix(run)):
        tag, _, rest = key[len(prefix) :].partition("/")
        if tag.startswith("step-") and rest:
            pairs.append((tag, rest))
    return pairs


def committed_steps(store: ObjectStore, run: str) -> list[int]:
    """Steps with a COMMITTED marker, newest first (contents not yet verified)."""
    steps = {int(tag.removeprefix("step-")) for tag, rest in _relative(store, run) if rest == COMMITTED}
    return sorted(steps, reverse=True)


def incomplete_steps(store: ObjectStore, run: str) -> list[int]:
    """Steps with files but no COMMITTED marker (a save that was interrupted)."""
    tags = {tag for tag, _ in _relative(store, run)}
    committed = {tag_for(s) for s in committed_steps(store, run)}
    return sorted(int(t.removeprefix("step-")) for t in tags - committed)


def download_verified(store: ObjectStore, run: str, step: int, local: Path) -> dict:
    """Download a committed checkpoint into `local/<tag>/`, verifying every file; returns the trainer state.

    Raises ValueError when a file is missing or does not match COMMITTED.
    """
    prefix = f"{checkpoints_prefix(run)}/{tag_for(step)}"
    manifest = json.loads(store.read(f"{prefix}/{COMMITTED}"))
    target = local / tag_for(step)
    for entry in manifest["files"]:
        try:
            data = store.read(f"{prefix}/{entry['name']}")
        except FileNotFoundError:
            raise ValueError(f"{store.uri(prefix)}: file {entry['name']} listed in COMMITTED is missing") from None
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{store.uri(prefix)}: file {entry['name']} does not match its sha256 in COMMITTED")
        path = target / entry["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return json.loads((target / STATE).read_text())


def newest_loadable(store: ObjectStore, run: str, local: Path) -> tuple[int, dict] | None:
    """The newest checkpoint that verifies, downloaded into `local`; skips broken ones with a warning."""
    for step in incomplete_steps(store, run):
        warnings.warn(f"checkpoint {tag_for(step)} of run {run} has no COMMITTED marker: ignored", stacklevel=2)
    for step in committed_steps(store, run):
        try:
            return step, download_verified(store, run, step, local)
        except ValueError as error:
            warnings.warn(f"skipping checkpoint {tag_for(step)}: {error}", stacklevel=2)
    return None


def garbage_collect(store: ObjectStore, run: str, keep_last: int) -> list[int]:
    """Delete committed checkpoints beyond the newest `keep_last` (COMMITTED first, so a half-deleted
    checkpoint is never mistaken for a valid one). Returns the deleted steps."""
    deleted = []
    for step in committed_steps(store, run)[keep_last:]:
        prefix = f"{checkpoints_prefix(run)}/{tag_for(step)}"
        store.delete(f"{prefix}/{COMMITTED}")
        for key in store.list(prefix):
            store.delete(key)
        deleted.append(step)
    return deleted
