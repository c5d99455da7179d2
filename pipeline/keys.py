"""Every storage key of a dataset and of a run, named in one place (DESIGN.md s.3).

Keys are '/'-separated and relative to the storage root. Names that come from outside (a file
name listed in a checkpoint's `COMMITTED`) go through `safe_relative` before they become keys or
local paths, so nothing can point above the directory it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


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

    def checkpoint(self, step: int) -> str:
        return f"{self.checkpoints}/{checkpoint_tag(step)}"

    def checkpoint_file(self, step: int, name: str) -> str:
        return f"{self.checkpoint(step)}/{safe_relative(name)}"

    @property
    def metrics(self) -> str:
        """Append-only segments `metrics/part-<first step>.jsonl` (see pipeline/train/metrics.py)."""
        return f"{self.prefix}/metrics"

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


def checkpoint_tag(step: int) -> str:
    return f"step-{step:08d}"
