"""Per-task memory accounting of data-stage tasks, for benchmarks (opt-in, Linux).

A Ray worker runs many tasks, so its RSS is the high-water mark of its whole life (imports, earlier
tasks, allocator fragmentation), not of the largest task. With `SORA_TASK_MEMORY_LOG=<dir>` in the
workers' environment, every data-stage task resets its process's peak RSS (`/proc/self/clear_refs`,
"5") when it starts and appends one JSON line to `<dir>/<pid>.jsonl` when it ends: its name, the
RSS it started from and its own peak. `bench/data_scale.py` reports the largest `peak - start`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOG = "SORA_TASK_MEMORY_LOG"


def _status(field: str) -> int:
    """A `/proc/self/status` field in bytes (kB there)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def start() -> int | None:
    """At a task's start: its RSS, with the peak reset to it (None when not accounting)."""
    if not os.environ.get(LOG):
        return None
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status("VmRSS")


def finish(name: str, started: int | None) -> None:
    """At a task's end: one line with its start RSS and its peak."""
    if started is None:
        return
    directory = Path(os.environ[LOG])
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"task": name, "start": started, "peak": _status("VmHWM")})
    with open(directory / f"{os.getpid()}.jsonl", "a") as handle:
        handle.write(line + "\n")
