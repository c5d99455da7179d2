"""Who used the machine's CPUs during a benchmark window: CPU seconds per process class.

A thread samples every process's CPU time (user + system) twice a second; `share(start, end)` says
how the CPU seconds of [start, end] (wall-clock `time.time()`, e.g. the first and last metrics
row of a training job) divide between the training workers, Ray's own processes (raylet, GCS,
the Train controller, idle workers), the driver (this process) and everything else on the machine.
On a 2-core machine that split is what bounds a job against a plain loop that has both cores.
"""

from __future__ import annotations

import bisect
import os
import threading
import time

import psutil

# Matched against a process's title (Ray sets `ray::<Actor>.<method>` once a worker runs a task:
# a process is classified again at every sample, so a worker is named by what it does now).
CLASSES = (
    ("train worker", ("RayTrainWorker",)),
    ("train controller", ("TrainController",)),
    ("ray other", ("ray::", "ray/", "dashboard", "log_monitor", "runtime_env", "monitor.py")),
)
BINARIES = {"raylet": "raylet", "gcs_server": "gcs"}


def classify(process: psutil.Process, driver: int) -> str:
    if process.pid == driver:
        return "driver (bench process)"
    try:
        name = process.name()
        if name in BINARIES:
            return BINARIES[name]
        title = " ".join(process.cmdline()[:1]) or name
    except (psutil.Error, OSError):
        return "other"
    for label, needles in CLASSES:
        if any(needle in title for needle in needles):
            return label
    return "other"


class CpuSampler:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.driver = interval, os.getpid()
        self.samples: list[tuple[float, dict[str, float]]] = []  # (time, CPU seconds used so far per class)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        totals: dict[str, float] = {}
        last: dict[int, float] = {}  # each process's CPU seconds at the previous sample
        while not self._stop.is_set():
            now = time.time()
            for process in psutil.process_iter(["cpu_times"]):
                times = process.info["cpu_times"]
                if times is None:
                    continue
                cpu = times.user + times.system
                # Seen for the first time: only what it uses from now on counts.
                spent = cpu - last.get(process.pid, cpu)
                last[process.pid] = cpu
                if spent > 0:
                    name = classify(process, self.driver)
                    totals[name] = totals.get(name, 0.0) + spent
            self.samples.append((now, dict(totals)))
            self._stop.wait(self.interval)

    def share(self, start: float, end: float) -> dict[str, float]:
        """Each class's share of the machine's CPU capacity over [start, end] (cores x seconds)."""
        times = [t for t, _ in self.samples]
        first = self.samples[max(0, bisect.bisect_left(times, start) - 1)][1]
        last = self.samples[min(len(times) - 1, bisect.bisect_left(times, end))][1]
        capacity = (os.cpu_count() or 1) * (end - start)
        used = {name: last.get(name, 0.0) - first.get(name, 0.0) for name in last}
        shares = {name: round(value / capacity, 4) for name, value in sorted(used.items()) if value > 0}
        shares["idle"] = round(max(0.0, 1 - sum(used.values()) / capacity), 4)
        return shares
