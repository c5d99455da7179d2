"""Checkpoints on object storage: `runs/<run>/checkpoints/step-XXXXXXXX/` + `COMMITTED`.

Saving: every rank saves its DeepSpeed files into a node-local directory and streams them up
(multipart for large files, hashed while streaming); rank 0 then writes `trainer_state.json` and,
last, `COMMITTED`, which lists every file with its size and sha256 and the run lease's fencing
epoch. The lease is checked right before `COMMITTED` is written and before anything is deleted,
so a writer that lost the run to another process cannot commit over it or delete its files.

Resuming: `find_resume` picks the newest committed checkpoint whose listing is sound (safe names,
every file present at its listed size); each rank then downloads only the files it needs (its own
ZeRO partition plus the shared ones), once per node, verifying sha256 while streaming. When
committed checkpoints exist but none is sound, resuming fails with the list of what was found:
training never silently restarts from step 0 (`restart=True` asks for that explicitly).

A checkpoint without `COMMITTED` does not exist; garbage collection deletes those leftovers of
killed saves and committed checkpoints older than the newest sound one beyond `keep_last`.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..keys import RunKeys, checkpoint_tag, safe_relative
from ..records import COMMITTED, STATE, Committed, CommittedFile, TrainerState
from ..storage import ObjectStore

# DeepSpeed names a rank's ZeRO partition `[bf16_]zero_pp_rank_<dp>_mp_rank_<mp>_...`; every other
# file of a checkpoint (model states of ZeRO-1/2, pipeline layers, trainer state) is shared.
_PARTITION = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_")


class ResumeError(UserError):
    """The run has checkpoints but none can be resumed from, or they belong to another setup."""


def tag_for(step: int) -> str:
    return checkpoint_tag(step)


# -- saving ------------------------------------------------------------------------------------
def upload_rank_files(store: ObjectStore, keys: RunKeys, step: int, local: Path) -> list[CommittedFile]:
    """Stream every file under `local` (one rank's DeepSpeed save) up; returns its listing entries."""
    files = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        name = path.relative_to(local).as_posix()
        size, sha = store.upload_file(keys.checkpoint_file(step, name), path)
        files.append(CommittedFile(name=name, size=size, sha256=sha))
    return files


def commit(
    store: ObjectStore,
    keys: RunKeys,
    step: int,
    files: list[CommittedFile],
    state: TrainerState,
    epoch: int,
    fence: Callable[[], None],
) -> None:
    """Rank 0, after every rank uploaded: write the trainer state, check the lease, then COMMITTED."""
    body = state.to_bytes()
    store.write(keys.checkpoint_file(step, STATE), body)
    listed = sorted(files, key=lambda f: f.name)
    listed.append(CommittedFile(name=STATE, size=len(body), sha256=hashlib.sha256(body).hexdigest()))
    fence()
    Committed(step=step, lease_epoch=epoch, files=listed).write(store, keys)


# -- finding what to resume from ---------------------------------------------------------------
@dataclass
class Inventory:
    """What the run's checkpoint prefix holds."""

    sound: list[int] = field(default_factory=list)  # committed and listing checks out, newest first
    broken: dict[int, str] = field(default_factory=dict)  # committed but unusable: step -> reason
    uncommitted: list[int] = field(default_factory=list)  # files without COMMITTED (killed saves)

    def describe(self) -> str:
        parts = [f"{tag_for(s)}: {reason}" for s, reason in sorted(self.broken.items())]
        parts += [f"{tag_for(s)}: no COMMITTED marker (interrupted save)" for s in self.uncommitted]
        return "; ".join(parts)


def inventory(store: ObjectStore, keys: RunKeys) -> Inventory:
    """Classify every checkpoint by its listing (names, presence, sizes): cheap, no content read."""
    sizes: dict[str, dict[str, int]] = {}
    prefix = keys.checkpoints + "/"
    for key in store.list(keys.checkpoints):
        tag, _, rest = key[len(prefix) :].partition("/")
        if tag.startswith("step-") and rest:
            sizes.setdefault(tag, {})[rest] = -1
    found = Inventory()
    for tag in sorted(sizes, reverse=True):
        step = int(tag.removeprefix("step-"))
        if COMMITTED not in sizes[tag]:
            found.uncommitted.append(step)
            continue
        problem = _listing_problem(store, keys, step, set(sizes[tag]))
        if problem:
            found.broken[step] = problem
        else:
            found.sound.append(step)
    return found


def read_committed(store: ObjectStore, keys: RunKeys, step: int) -> Committed:
    """The listing of a checkpoint (names validated as safe relative paths while parsing)."""
    return Committed.load(store, keys, step)


def _listing_problem(store: ObjectStore, keys: RunKeys, step: int, present: set[str]) -> str | None:
    try:
        marker = read_committed(store, keys, step)
    except (ValueError, KeyError, TypeError) as error:
        return f"COMMITTED is unreadable or unsafe ({error})"
    for entry in marker.files:
        if entry.name not in present:
            return f"file {entry.name} listed in COMMITTED is missing"
        actual = store.size(keys.checkpoint_file(step, entry.name))
        if actual != entry.size:
            return f"file {entry.name} has {actual} bytes, COMMITTED lists {entry.size}"
    return None


def find_resume(store: ObjectStore, keys: RunKeys, restart: bool = False) -> tuple[int | None, Inventory]:
    """The step to resume from (None: start fresh). Raises `ResumeError` instead of silently
    starting over when committed checkpoints exist and none is sound, unless `restart`."""
    found = inventory(store, keys)
    if found.sound:
        return found.sound[0], found
    if found.broken and not restart:
        raise ResumeError(
            f"run {keys.run!r} has committed checkpoints but none can be resumed from: {found.describe()}. "
            "Fix or remove them, use another run name, or pass --restart to train this run from step 0"
        )
    return None, found


def read_state(store: ObjectStore, keys: RunKeys, step: int) -> TrainerState:
    return TrainerState.load(store, keys, step)


def check_compatible(saved: dict, current: dict) -> None:
    """Resuming with another model, strategy or precision would end in a DeepSpeed traceback; say
    which setting changed instead. Worker count and pipeline layout may change (universal format)."""
    changed = changed_settings(saved, current)
    if changed:
        raise ResumeError(
            "this run's checkpoints were written with other settings ("
            + "; ".join(changed)
            + "); resume with the original settings or use another run name"
        )


def changed_settings(saved: dict, current: dict) -> list[str]:
    """`"name: saved -> current"` for each compatibility setting that differs."""
    return [f"{name}: {saved.get(name)!r} -> {current[name]!r}" for name in current if saved.get(name) != current[name]]


# The model settings that shape parameters and so the checkpoint's tensors.
_ARCHITECTURE = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "norm",
    "adn_rank",
    "tie_word_embeddings",
)


def compatibility_fields(train, model_config: dict, bf16: bool) -> dict:
    """The settings a checkpoint can only be resumed under (see `check_compatible`)."""
    return {
        **{f"model.{name}": model_config.get(name) for name in _ARCHITECTURE},
        "strategy": train.strategy,
        "zero_stage": train.effective_zero_stage,
        "offload": train.offload,
        "bf16": bf16,
    }


# -- downloading ---------------------------------------------------------------------------------
def needed_by(name: str, dp_rank: int, everything: bool) -> bool:
    """Whether a rank with data-parallel index `dp_rank` needs checkpoint file `name`."""
    match = _PARTITION.search(name)
    return everything or match is None or int(match.group(1)) == dp_rank


def download_for_rank(
    store: ObjectStore, keys: RunKeys, step: int, node_dir: Path, dp_rank: int, everything: bool
) -> int:
    """Download (once per node, verified) the files this rank needs into `node_dir/<tag>/`.

    Ranks of one node share `node_dir`: a per-file lock makes the first rank download a shared
    file and the others reuse it. Returns the bytes this rank downloaded.
    """
    marker = read_committed(store, keys, step)
    downloaded = 0
    for entry in marker.files:
        if not needed_by(entry.name, dp_rank, everything):
            continue
        name = safe_relative(entry.name)
        path = node_dir / tag_for(step) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Locks and "verified" markers live beside the checkpoint folder, not in it: DeepSpeed and
        # ds_to_universal read that folder.
        bookkeeping = node_dir / ".state" / tag_for(step) / name
        with node_lock(bookkeeping.with_name(bookkeeping.name + ".lock")):
            done = bookkeeping.with_name(bookkeeping.name + ".verified")
            if done.exists() and done.read_text() == entry.sha256:
                continue
            try:
                store.download_file(keys.checkpoint_file(step, entry.name), path, entry.sha256, entry.size)
            except ValueError as error:
                raise ResumeError(f"checkpoint {tag_for(step)} of run {keys.run!r} is corrupt: {error}") from None
            done.write_text(entry.sha256)
            downloaded += entry.size
    return downloaded


@contextmanager
def node_lock(path: Path):
    """An exclusive lock shared by the processes of one node (flock on a local file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_node_copy(node_dir: Path) -> None:
    shutil.rmtree(node_dir, ignore_errors=True)


# -- garbage collection --------------------------------------------------------------------------
def garbage_collect(
    store: ObjectStore, keys: RunKeys, keep_last: int, newest: int, fence: Callable[[], None]
) -> list[int]:
    """Delete leftovers of killed saves, and committed checkpoints older than `newest` (the one just
    committed and verified) beyond the newest `keep_last`. Never touches anything newer than
    `newest`. COMMITTED goes first, so a half-deleted checkpoint never looks valid."""
    found = inventory(store, keys)
    committed = sorted(set(found.sound) | set(found.broken), reverse=True)
    older = [s for s in committed if s < newest]
    doomed = older[max(0, keep_last - 1) :] + [s for s in found.uncommitted if s < newest]
    fence()
    for step in sorted(set(doomed), reverse=True):
        prefix = keys.checkpoint(step)
        if store.exists(f"{prefix}/{COMMITTED}"):
            store.delete(f"{prefix}/{COMMITTED}")
        for key in store.list(prefix):
            store.delete(key)
    return sorted(set(doomed), reverse=True)
