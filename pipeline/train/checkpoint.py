"""Checkpoints on object storage: `runs/<run>/checkpoints/step-XXXXXXXX-eNNNN/` + `COMMITTED`.

A checkpoint's folder names its step and the run-lease epoch of its writer (pipeline/keys.py):
files written under different epochs never share a key, so a stale writer still uploading for a
step cannot replace what the current holder commits for that step. Folders without the epoch
(`step-XXXXXXXX/`, written before) are read, resumed from and collected like the others; of two
checkpoints of one step the newer epoch wins.

Saving: every rank saves its DeepSpeed files into a node-local directory and streams them up
(multipart for large files, hashed while streaming; by default in a background thread while
training continues, checkpoint_upload.py); rank 0 then writes `trainer_state.json` and, last,
`COMMITTED`, which lists every file with its size and sha256 and the run lease's fencing epoch.
The lease is checked right before `COMMITTED` is written and before anything is deleted, so a
writer that lost the run to another process cannot commit over it or delete its files.

Resuming: `find_resume` picks the newest committed checkpoint whose listing is sound (safe names,
every file present at its listed size) and, with `verify`, whose shared files and trainer state
hash to what `COMMITTED` lists (a corrupt one is skipped, with the reason, for the next older);
each rank then downloads only the files it needs (its own ZeRO partition plus the shared ones),
once per node, verifying sha256 while streaming. When committed checkpoints exist but none is
usable, resuming fails with the list of what was found: training never silently restarts from
step 0 (`restart=True` asks for that explicitly).

A checkpoint without `COMMITTED` does not exist; garbage collection deletes those leftovers of
killed saves and committed checkpoints older than the newest sound one beyond `keep_last`, except
the ones a warm-starting child run has pinned (`WarmStartPin`, until it expires). A checkpoint's
universal-format copy (`universal/`, made once for resuming on another layout, universal.py) is
not listed in `COMMITTED`: the listing checks ignore it and it is deleted with its folder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..keys import CheckpointId, RunKeys, as_checkpoint
from ..records import COMMITTED, STATE, Committed, CommittedFile, TrainerState, WarmStartPin
from ..storage import ObjectStore

# DeepSpeed names a rank's ZeRO partition `[bf16_]zero_pp_rank_<dp>_mp_rank_<mp>_...`; every other
# file of a checkpoint (model states of ZeRO-1/2, pipeline layers, trainer state) is shared.
_PARTITION = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_")
_CHUNK = 8 << 20


class ResumeError(UserError):
    """The run has checkpoints but none can be resumed from, or they belong to another setup."""


def tag_for(checkpoint: int | CheckpointId) -> str:
    return as_checkpoint(checkpoint).tag


# -- saving ------------------------------------------------------------------------------------
def upload_rank_files(
    store: ObjectStore,
    keys: RunKeys,
    checkpoint: int | CheckpointId,
    local: Path,
    after_file: Callable[[], None] | None = None,
) -> list[CommittedFile]:
    """Stream every file under `local` (one rank's DeepSpeed save) up; returns its listing entries.
    `after_file` runs after each file (the background upload's stop check and fault hook)."""
    return upload_files(store, local, lambda name: keys.checkpoint_file(checkpoint, name), after_file)


def upload_files(
    store: ObjectStore, local: Path, key: Callable[[str], str], after_file: Callable[[], None] | None = None
) -> list[CommittedFile]:
    """Stream every file under `local` up to `key(<name relative to local>)`, hashing while reading."""
    files = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        name = path.relative_to(local).as_posix()
        size, sha = store.upload_file(key(name), path)
        files.append(CommittedFile(name=name, size=size, sha256=sha))
        if after_file is not None:
            after_file()
    return files


def commit(
    store: ObjectStore,
    keys: RunKeys,
    checkpoint: int | CheckpointId,
    files: list[CommittedFile],
    state: TrainerState,
    epoch: int,
    fence: Callable[[], None],
) -> None:
    """Rank 0, after every rank uploaded: write the trainer state, check the lease, then COMMITTED.

    `checkpoint` is the folder the files went to (`CheckpointId(step, epoch)` for new saves)."""
    checkpoint = as_checkpoint(checkpoint)
    if checkpoint.epoch is not None and checkpoint.epoch != epoch:
        raise ValueError(f"checkpoint {checkpoint.tag} is not the folder of lease epoch {epoch}")
    body = state.to_bytes()
    store.write(keys.checkpoint_file(checkpoint, STATE), body)
    listed = sorted(files, key=lambda f: f.name)
    listed.append(CommittedFile(name=STATE, size=len(body), sha256=hashlib.sha256(body).hexdigest()))
    fence()
    Committed(step=checkpoint.step, lease_epoch=epoch, files=listed).write(store, keys, checkpoint)


# -- finding what to resume from ---------------------------------------------------------------
@dataclass
class Inventory:
    """What the run's checkpoint prefix holds (both key layouts)."""

    sound: list[CheckpointId] = field(default_factory=list)  # committed, listing checks out, newest first
    broken: dict[CheckpointId, str] = field(default_factory=dict)  # committed but unusable: reason
    uncommitted: list[CheckpointId] = field(default_factory=list)  # files without COMMITTED (killed saves)
    skipped: list[str] = field(default_factory=list)  # "<tag>: <reason>" of what resume passed over

    def describe(self) -> str:
        parts = [f"{c.tag}: {reason}" for c, reason in sorted(self.broken.items(), key=lambda i: i[0].order)]
        parts += [f"{c.tag}: no COMMITTED marker (interrupted save)" for c in self.uncommitted]
        return "; ".join(parts)

    def set_aside(self, checkpoint: CheckpointId, reason: str) -> None:
        """`checkpoint` turned out unusable (content check, download): broken from now on."""
        if checkpoint in self.sound:
            self.sound.remove(checkpoint)
        self.broken[checkpoint] = reason
        self.skipped.append(f"{checkpoint.tag}: {reason}")


def inventory(store: ObjectStore, keys: RunKeys) -> Inventory:
    """Classify every checkpoint by its listing (names, presence, sizes): cheap, no content read."""
    present: dict[CheckpointId, dict[str, int]] = {}  # checkpoint -> {file name: size}
    prefix = keys.checkpoints + "/"
    for key, size in store.list_sizes(keys.checkpoints).items():
        tag, _, rest = key[len(prefix) :].partition("/")
        checkpoint = CheckpointId.parse(tag)
        if checkpoint is not None and rest:
            present.setdefault(checkpoint, {})[rest] = size
    found = Inventory()
    for checkpoint in sorted(present, key=lambda c: c.order, reverse=True):
        if COMMITTED not in present[checkpoint]:
            found.uncommitted.append(checkpoint)
            continue
        problem = _listing_problem(store, keys, checkpoint, present[checkpoint])
        if problem:
            found.broken[checkpoint] = problem
        else:
            found.sound.append(checkpoint)
    return found


def read_committed(store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> Committed:
    """The listing of a checkpoint (names validated as safe relative paths while parsing)."""
    return Committed.load(store, keys, checkpoint)


def _listing_problem(
    store: ObjectStore, keys: RunKeys, checkpoint: CheckpointId, present: dict[str, int]
) -> str | None:
    try:
        marker = read_committed(store, keys, checkpoint)
    except (ValueError, KeyError, TypeError) as error:
        return f"COMMITTED is unreadable or unsafe ({error})"
    if marker.step != checkpoint.step:
        return f"COMMITTED names step {marker.step}"
    if checkpoint.epoch is not None and marker.lease_epoch != checkpoint.epoch:
        return f"COMMITTED was written under lease epoch {marker.lease_epoch}, not {checkpoint.epoch}"
    for entry in marker.files:
        if entry.name not in present:
            return f"file {entry.name} listed in COMMITTED is missing"
        actual = present[entry.name]  # from the listing: no request per file
        if actual != entry.size:
            return f"file {entry.name} has {actual} bytes, COMMITTED lists {entry.size}"
    return None


def is_shared(name: str) -> bool:
    """Whether every rank loads checkpoint file `name` (not a rank's own ZeRO partition)."""
    return _PARTITION.search(name) is None


def content_problem(
    store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId, which: Callable[[str], bool] = is_shared
) -> str | None:
    """Stream the listed files `which` selects (default: the shared ones and the trainer state) and
    compare their sha256 with `COMMITTED`; the first mismatch, or None. Per-rank partitions are
    verified by each rank while it downloads them."""
    try:
        marker = read_committed(store, keys, checkpoint)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
        return f"COMMITTED is unreadable or unsafe ({error})"
    for entry in marker.files:
        if not which(entry.name):
            continue
        try:
            size, sha = _hash(store, keys.checkpoint_file(checkpoint, entry.name))
        except FileNotFoundError:
            return f"file {entry.name} listed in COMMITTED is missing"
        if sha != entry.sha256:
            return f"file {entry.name} sha256 mismatch (COMMITTED lists {entry.sha256[:12]}..., stored {sha[:12]}...)"
        if size != entry.size:
            return f"file {entry.name} has {size} bytes, COMMITTED lists {entry.size}"
    return None


def _hash(store: ObjectStore, key: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    try:
        with store.fs.open_input_stream(store.path(key)) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise store.translate_error(error, key) from None
    return size, digest.hexdigest()


def find_resume(
    store: ObjectStore,
    keys: RunKeys,
    restart: bool = False,
    verify: bool = False,
    exclude: dict[CheckpointId, str] | None = None,
) -> tuple[CheckpointId | None, Inventory]:
    """The checkpoint to resume from (None: start fresh) and what was found.

    `verify` (rank 0 of the workers) also checks the content of the shared files and the trainer
    state and passes over a corrupt checkpoint to the next older sound one; `exclude` names
    checkpoints already found unusable (a rank's partition failed its download) with the reason.
    Both land in `Inventory.skipped`. Raises `ResumeError` instead of silently starting over when
    committed checkpoints exist and none is usable, unless `restart`."""
    found = inventory(store, keys)
    for checkpoint, reason in (exclude or {}).items():
        found.set_aside(checkpoint, reason)
    for checkpoint in list(found.sound):
        problem = content_problem(store, keys, checkpoint) if verify else None
        if problem is None:
            return checkpoint, found
        found.set_aside(checkpoint, problem)
    if found.broken and not restart:
        raise ResumeError(
            f"run {keys.run!r} has committed checkpoints but none can be resumed from: {found.describe()}. "
            "Fix or remove them, use another run name, or pass --restart to train this run from step 0"
        )
    return None, found


def read_state(store: ObjectStore, keys: RunKeys, checkpoint: int | CheckpointId) -> TrainerState:
    return TrainerState.load(store, keys, checkpoint)


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


# -- garbage collection --------------------------------------------------------------------------
def pinned(store: ObjectStore, keys: RunKeys) -> set[CheckpointId]:
    """Checkpoints of this run that an unexpired warm-start pin protects."""
    return {p.checkpoint for p in WarmStartPin.load_all(store, keys.run) if not p.expired() and p.checkpoint}


def garbage_collect(
    store: ObjectStore, keys: RunKeys, keep_last: int, newest: int | CheckpointId, fence: Callable[[], None]
) -> list[CheckpointId]:
    """Delete leftovers of killed saves, and committed checkpoints older than `newest` (the one just
    committed and verified) beyond the newest `keep_last`. Never touches anything newer than
    `newest`, nor a checkpoint a warm-starting child has pinned (pins are read again right before
    deleting, after the fence). COMMITTED goes first, so a half-deleted checkpoint never looks valid."""
    newest = as_checkpoint(newest)
    found = inventory(store, keys)
    committed = sorted([*found.sound, *found.broken], key=lambda c: c.order, reverse=True)
    older = [c for c in committed if c.order < newest.order]
    doomed = older[max(0, keep_last - 1) :] + [c for c in found.uncommitted if c.order < newest.order]
    fence()
    keep = pinned(store, keys)
    doomed = sorted({c for c in doomed if c not in keep}, key=lambda c: c.order, reverse=True)
    for checkpoint in doomed:
        prefix = keys.checkpoint(checkpoint)
        if store.exists(f"{prefix}/{COMMITTED}"):
            store.delete(f"{prefix}/{COMMITTED}")
        for key in store.list(prefix):
            store.delete(key)
    return doomed
