"""Resuming with another layout: a checkpoint's copy in DeepSpeed's universal format, made once.

The universal format does not depend on the layout that loads it, so a checkpoint is converted
once, whatever worker count or pipeline layout resumes from it, and the copy is kept in the store
next to the checkpoint (`<checkpoint>/universal/`, pipeline/keys.py). Garbage collection and the
checkpoint listing go by checkpoint folder: the copy is never taken for a checkpoint and is deleted
with its own.

Converting (global rank 0, before any torch collective: checkpoint_manager.prepare_resume; the
other ranks wait in Ray Train's barrier, which has no timeout): download the whole checkpoint
(verified), run `ds_to_universal` into a fresh scratch folder, upload every file it wrote (hashed
while streaming), check the run lease and write the `Converted` marker last, listing each file
with size and sha256. Without the marker the copy does not exist: a conversion killed midway, or
an upload interrupted before the marker, is redone from scratch by the next attempt (scratch
folder emptied, the partial upload deleted). The converting node keeps its converted folder and
marks its files verified, so none of its ranks downloads them again.

A warm-starting child run converts its parent's checkpoint the same way, into the parent's folder
(derived data, fenced by the child's own lease; the parent's GC keeps the pinned checkpoint).

Loading: every rank downloads from the copy only the files DeepSpeed reads on that rank (see
`loaded_by`), once per node, each verified against the marker. A file of the copy that fails
verification removes the marker, so the next attempt converts again instead of trusting it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from ..faults import fail_point
from ..keys import CheckpointId, RunKeys
from ..records import Converted, TrainerState
from ..storage import ObjectStore
from . import checkpoint_download as fetch
from .checkpoint import ResumeError, upload_files

if TYPE_CHECKING:
    from ..config.train import TrainConfig

log = logging.getLogger(__name__)

# The converter, run as a subprocess: its memory goes back when it exits, and a crash of it fails
# the conversion instead of the worker (tests swap in a fake one).
COMMAND = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal"]

# ZeRO-3 model states of data-parallel rank N (the universal copy holds every old rank's).
_RANK_MODEL_STATES = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_model_states\.pt")


def local_folder(checkpoint: CheckpointId) -> str:
    """The node-local folder (and DeepSpeed tag) of a checkpoint's universal copy."""
    return f"{checkpoint.tag}-universal"


def loaded_by(name: str, parameters: set[str] | None) -> bool:
    """Whether a rank reads file `name` of a universal copy when it loads it; `parameters` are the
    parameters whose optimizer state it holds (None: all of them).

    What DeepSpeed (0.19) reads on a rank with `checkpoint.load_universal`:
    - model states: `mp_rank_XX_model_states.pt` (ZeRO-1/2), or under ZeRO-3 only
      `zero_pp_rank_0_mp_rank_XX_model_states.pt` (runtime/engine.py `_get_all_ckpt_names`
      asks for pp rank "0"); the copy holds every old rank's, the others are never read;
    - `zero/optimizer_state.pt` (step, loss scaler, param groups): every rank;
    - `zero/<parameter>/{fp32,exp_avg,exp_avg_sq,step}.pt`, each the whole tensor, which the rank
      slices: under ZeRO-3 every rank reads every parameter's (each holds a slice of every
      parameter, runtime/zero/stage3.py), so every rank needs all of them; under ZeRO-1/2 only
      the parameters overlapping the rank's optimizer partition (runtime/base_optimizer.py reads
      the parameters with an `_hp_mapping`), which `Engine.universal_parameters` names.
    Anything else (pipeline layer files) is read by every rank.
    """
    match = _RANK_MODEL_STATES.fullmatch(name)
    if match:
        return match.group(1) == "0"
    parts = name.split("/")
    if parameters is not None and len(parts) == 3 and parts[0] == "zero":
        return parts[1] in parameters
    return True


def check_convertible(state: TrainerState, train: TrainConfig, what: str) -> None:
    """On the driver, before Ray starts: refuse a resume (or warm start) on another layout that
    DeepSpeed cannot convert. `ds_to_universal` reads the ZeRO optimizer partitions; a pipeline run
    with `zero_stage: 0` writes none ("can't find *_optim_states.pt files"), so it resumes only on
    the layout it was written with. Any other layout change (worker count, pipeline stages) converts."""
    if state.compatibility.get("zero_stage") != 0:
        return
    layout = (train.split(train.max_workers).data_parallel, train.pipeline_stages)
    if state.layout != layout:
        (dp, pp), (new_dp, new_pp) = state.layout, layout
        raise ResumeError(
            f"{what} was written with {pp} pipeline stages x {dp} data-parallel and zero_stage 0, which "
            f"cannot be resumed on another layout ({new_pp} x {new_dp}: DeepSpeed's universal format needs "
            f"ZeRO-1's optimizer partitions); use workers: {state.world_size}, pipeline_stages: {pp}"
        )


def converted(store: ObjectStore, keys: RunKeys, checkpoint: CheckpointId) -> Converted | None:
    """The completion marker of the checkpoint's universal copy, or None (no usable copy)."""
    try:
        marker = Converted.load(store, keys, checkpoint)
    except ValueError as error:  # unreadable: as good as absent, converted again
        log.warning("run %r: universal copy of %s has a bad marker (%s)", keys.run, checkpoint.tag, error)
        return None
    return marker if marker is not None and marker.source == checkpoint.tag else None


def ensure_converted(
    store: ObjectStore,
    keys: RunKeys,
    checkpoint: CheckpointId,
    node_dir: Path,
    fence: Callable[[], None],
    writer: str,
) -> int:
    """Rank 0: make sure the checkpoint has a complete universal copy in the store (a marker found:
    nothing to do). Returns the bytes downloaded for it. `fence` checks the writer's run lease
    right before the marker; `writer` names it in the marker."""
    if converted(store, keys, checkpoint) is not None:
        return 0
    downloaded = fetch.download_for_rank(store, keys, checkpoint, node_dir, 0, everything=True)
    folder = local_folder(checkpoint)
    # A scratch folder per converting process: a converter orphaned by a killed worker (its pool
    # processes outlive it) never writes into this one. Those of dead processes are removed.
    scratch = node_dir / ".convert" / f"{folder}-{os.getpid()}"
    for stale in scratch.parent.glob(f"{folder}-*"):
        if not _alive(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)  # a killed conversion's output never counts
    started = time.monotonic()
    log.info("run %r: converting %s to universal format (%d bytes downloaded)", keys.run, checkpoint.tag, downloaded)
    convert(node_dir / checkpoint.tag, scratch)
    seconds = time.monotonic() - started
    for key in store.list(keys.universal(checkpoint)):  # an interrupted upload: start over
        store.delete(key)
    files = upload_files(store, scratch, lambda name: keys.universal_file(checkpoint, name))
    fail_point("universal_before_marker")
    fence()
    info = dict(source=checkpoint.tag, writer=writer, deepspeed=version("deepspeed"), seconds=round(seconds, 3))
    Converted(**info, files=files).write(store, keys, checkpoint)
    size = sum(f.size for f in files)
    log.info("run %r: converted %s to universal format in %.1f s (%d bytes)", keys.run, checkpoint.tag, seconds, size)
    # This node keeps the converted files (verified: they were hashed while uploading); the
    # original's copy is no longer needed.
    fetch.forget(node_dir, folder)
    scratch.rename(node_dir / folder)
    fetch.mark_verified(node_dir, folder, files)
    fetch.forget(node_dir, checkpoint.tag)
    return downloaded


def convert(source: Path, target: Path) -> None:
    """Run the converter from `source` into the fresh folder `target`."""
    command = [*COMMAND, "--input_folder", str(source), "--output_folder", str(target)]
    # ZeRO-1/2 saves carry `universal_checkpoint_info` only when the model declares one (Megatron's
    # tensor-parallel metadata); Sora's does not, and without it the converter refuses them. With no
    # tensor parallelism the default it injects (the format version) is all there is to say.
    # Extract (one rank file each) and merge (one parameter each) in parallel, up to 8 processes:
    # at 7B a serial conversion of 64 ranks' files takes tens of minutes; each process holds one
    # rank's optimizer share or one parameter's slices, so 8 stay well inside a node's memory.
    workers = str(max(1, min(8, os.cpu_count() or 1)))
    command += ["--inject_missing_state", "--num_extract_workers", workers, "--num_merge_workers", workers]
    target.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_die_with_parent)
    if done.returncode:
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        raise RuntimeError(
            f"converting checkpoint {source.name} to universal format failed ({how}):\n{done.stderr[-2000:]}"
        )


def _die_with_parent() -> None:
    """In the converter (Linux): SIGKILL it when the worker that started it dies, instead of
    leaving it converting for nobody."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def download_for_rank(
    store: ObjectStore,
    keys: RunKeys,
    checkpoint: CheckpointId,
    node_dir: Path,
    parameters: set[str] | None,
    fence: Callable[[], None],
) -> int:
    """Download (once per node, verified) the files of the universal copy this rank loads into
    `node_dir/<tag>-universal/`; returns the bytes downloaded."""
    marker = converted(store, keys, checkpoint)
    if marker is None:
        raise RuntimeError(f"checkpoint {checkpoint.tag} of run {keys.run!r} has no universal copy")
    entries = [entry for entry in marker.files if loaded_by(entry.name, parameters)]

    def damaged(error: ValueError) -> Exception:
        fence()
        Converted.delete(store, keys, checkpoint)
        return RuntimeError(
            f"the universal copy of checkpoint {checkpoint.tag} of run {keys.run!r} is damaged ({error}); "
            "its marker is removed, the next attempt converts the checkpoint again"
        )

    key = lambda name: keys.universal_file(checkpoint, name)  # noqa: E731
    return fetch.download_verified(store, entries, key, node_dir, local_folder(checkpoint), damaged)
