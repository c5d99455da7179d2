"""Every storage key of a dataset and of a run, named in one place (DESIGN.md s.3).

Keys are '/'-separated and relative to the storage root. Names that come from outside (a file
name listed in a checkpoint's `COMMITTED`) go through `safe_relative` before they become keys or
local paths, so nothing can point above the directory it belongs to.

Checkpoints (DESIGN.md s.3, "files written under different lease epochs never share a key"): a
checkpoint is named by its step and the run-lease epoch of the writer, `step-00000100-e0003/`, so
a stale writer (an older epoch) uploading files for the same step writes beside the newer
holder's checkpoint, never over it. `step-00000100/` (no epoch) is the layout written before the
epoch was part of the key; it stays readable (`CheckpointId(step, None)`). Among checkpoints of one
step, the newest epoch wins. A checkpoint's copy in DeepSpeed's universal format (converted once,
for resuming with another layout) lives in its `universal/` subfolder. A warm start pins its
parent's checkpoint with `runs/<parent>/pins/<child>.json` (garbage collection leaves a pinned
checkpoint alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

UNIVERSAL = "universal"  # the subfolder of a checkpoint's universal-format copy


def safe_relative(name: str) -> str:
    """`name` if it is a plain relative path (no absolute path, no `..`, no empty part); else ValueError."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"unsafe file name {name!r}: expected a relative path without '..'")
    return path.as_posix()


@dataclass(frozen=True)
class DatasetKeys:
    name: str

    @property
    def prefix(self) -> str:
        return f"datasets/{self.name}"

    @property
    def latest(self) -> str:
        return f"{self.prefix}/LATEST"

    @property
    def lease(self) -> str:
        return f"{self.prefix}/_lease"

    @property
    def manifests(self) -> str:
        return f"{self.prefix}/manifests"

    def manifest(self, version: int) -> str:
        return f"{self.manifests}/v{version:06d}.json"

    def source_index(self, version: int, run_id: str) -> str:
        """`sources/v000002-<run-id>.arrow`: every source file of version `version` (Arrow IPC), named
        by the manifest. The run id keeps a crashed writer's file apart from the file of the next
        writer, who publishes under the same number (numbering goes by manifests)."""
        return f"{self.prefix}/sources/v{version:06d}-{run_id}.arrow"

    @property
    def scratch(self) -> str:
        """`tmp/`: the builds' blocks and shuffle files, one folder per run id (`data/exchange.py`),
        deleted when the build ends (a crashed build's by the next build, which holds the lease)."""
        return f"{self.prefix}/tmp"

    def rejects(self, run_id: str) -> str:
        """`rejects/<run-id>/`: the run's quarantined records, one Arrow file per record block."""
        return f"{self.prefix}/rejects/{run_id}"

    def suites(self, version: int) -> str:
        """Downstream suites built from version `version`'s held-out documents (pipeline/suites/build.py)."""
        return f"{self.prefix}/suites/v{version:06d}"


@dataclass(frozen=True)
class RunKeys:
    run: str

    @property
    def prefix(self) -> str:
        return f"runs/{self.run}"

    @property
    def pin(self) -> str:
        """`run.json`: the dataset version the run trains on."""
        return f"{self.prefix}/run.json"

    @property
    def config(self) -> str:
        """`config.json`: the run config of the last launch (what the report shows)."""
        return f"{self.prefix}/config.json"

    @property
    def lease(self) -> str:
        """One writer per run (same lease + fencing epoch as datasets)."""
        return f"{self.prefix}/_lease"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}/checkpoints"

    def checkpoint(self, checkpoint: int | CheckpointId) -> str:
        """The folder of one checkpoint (a plain step: the layout without epoch, `step-00000100`)."""
        return f"{self.checkpoints}/{as_checkpoint(checkpoint).tag}"

    def checkpoint_file(self, checkpoint: int | CheckpointId, name: str) -> str:
        return f"{self.checkpoint(checkpoint)}/{safe_relative(name)}"

    def universal(self, checkpoint: int | CheckpointId) -> str:
        """The checkpoint's copy in DeepSpeed's universal format, inside its folder: listing and
        garbage collection go by checkpoint folder, so the copy is never taken for a checkpoint
        and goes with its own (pipeline/train/universal.py)."""
        return f"{self.checkpoint(checkpoint)}/{UNIVERSAL}"

    def universal_file(self, checkpoint: int | CheckpointId, name: str) -> str:
        return f"{self.universal(checkpoint)}/{safe_relative(name)}"

    @property
    def warm_start_pins(self) -> str:
        """`pins/<child>.json`: checkpoints of this run a warm-starting child is downloading."""
        return f"{self.prefix}/pins"

    def warm_start_pin(self, child: str) -> str:
        return f"{self.warm_start_pins}/{safe_relative(child)}.json"

    @property
    def metrics(self) -> str:
        """Append-only segments `metrics/part-<first step>.jsonl` (see pipeline/train/metrics.py)."""
        return f"{self.prefix}/metrics"

    def attempts(self, epoch: int) -> str:
        """`attempts/e<epoch>.json`: one job's failure budgets and decisions (per run-lease epoch)."""
        return f"{self.prefix}/attempts/e{epoch:04d}.json"

    def timing(self, stage: str) -> str:
        """`timings/<stage>.json`: wall time of one stage (what the report shows)."""
        return f"{self.prefix}/timings/{stage}.json"

    @property
    def samples(self) -> str:
        return f"{self.prefix}/samples"

    @property
    def tensorboard(self) -> str:
        return f"{self.prefix}/tensorboard"

    @property
    def export(self) -> str:
        return f"{self.prefix}/hf"

    @property
    def ray(self) -> str:
        return f"{self.prefix}/ray"

    @property
    def eval(self) -> str:
        """`eval/<name>/results.json` + `samples_<task>.jsonl` per evaluated checkpoint."""
        return f"{self.prefix}/eval"


def checkpoint_tag(step: int, epoch: int | None = None) -> str:
    """`step-00000100` (no epoch: the layout before epochs were in the key) or `step-00000100-e0003`."""
    return f"step-{step:08d}" if epoch is None else f"step-{step:08d}-e{epoch:04d}"


_TAG = re.compile(r"step-(\d{8,})(?:-e(\d{4,}))?")


@dataclass(frozen=True)
class CheckpointId:
    """One checkpoint of a run: its step and the lease epoch it was written under (None: written
    before the epoch was part of the key). Ordered by (step, epoch); no epoch sorts first."""

    step: int
    epoch: int | None = None

    @property
    def tag(self) -> str:
        return checkpoint_tag(self.step, self.epoch)

    @property
    def order(self) -> tuple[int, int]:
        return self.step, -1 if self.epoch is None else self.epoch

    def __str__(self) -> str:
        return f"{self.step}" if self.epoch is None else f"{self.step} (lease epoch {self.epoch})"

    @classmethod
    def parse(cls, tag: str) -> CheckpointId | None:
        """The checkpoint a folder name names, or None for anything else."""
        match = _TAG.fullmatch(tag)
        if match is None:
            return None
        return cls(int(match.group(1)), int(match.group(2)) if match.group(2) is not None else None)


def as_checkpoint(checkpoint: int | CheckpointId) -> CheckpointId:
    """A plain step names the checkpoint without epoch (`step-00000100`)."""
    return checkpoint if isinstance(checkpoint, CheckpointId) else CheckpointId(int(checkpoint))
