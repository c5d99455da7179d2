"""Named fail points for fault-injection tests.

`SORA_FAILPOINTS=after_shards,before_latest` makes the process die (`os._exit`, no cleanup, like a
killed machine) when it reaches a listed point. Production runs never set the variable; the
check is one environment lookup. A training worker is killed at a step, or while it uploads a
checkpoint, with `SORA_KILL_WORKER` (`kill_once`, `kill_in_upload`); `throttle_uploads` gives a
store a fixed upload bandwidth (`SORA_UPLOAD_BANDWIDTH`, bench/checkpoint_stall.py).
"""

import os
import sys
import threading
import time


def fail_point(name: str) -> None:
    points = os.environ.get("SORA_FAILPOINTS", "")
    if points and name in points.split(","):
        print(f"fail point {name!r} reached: exiting", file=sys.stderr, flush=True)
        os._exit(75)


def kill_once(spec: str | None, rank: int, step: int, marker_dir: str) -> None:
    """Kill this worker process (`os._exit(1)`) when `spec` is "RANK:STEP" and it has not fired yet.

    The marker file makes it fire once per run, so the restarted worker group can finish.
    "RANK:STEP:raise" raises an error there instead, at every attempt: a bug that repeats.
    """
    if spec == f"{rank}:{step}:raise":
        raise RuntimeError(f"fault injection: rank {rank} raises at step {step}")
    if spec and spec == f"{rank}:{step}":
        _exit_once(os.path.join(marker_dir, f"killed-{rank}-{step}"), f"killing rank {rank} at step {step}")


def kill_in_upload(spec: str | None, rank: int, step: int, marker_dir: str) -> None:
    """Kill this worker process (`os._exit(1)`, from its upload thread) when `spec` is
    "RANK:STEP:upload": rank RANK dies while it uploads the checkpoint of step STEP (called after
    each file, so at least one is up and the commit cannot have happened). Fires once per run."""
    if spec and spec == f"{rank}:{step}:upload":
        marker = os.path.join(marker_dir, f"killed-{rank}-{step}-upload")
        _exit_once(marker, f"killing rank {rank} while it uploads the checkpoint of step {step}")


def _exit_once(marker: str, what: str) -> None:
    if os.path.exists(marker):
        return
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
    print(f"fault injection: {what}", file=sys.stderr, flush=True)
    os._exit(1)


def throttle_uploads(store, bytes_per_s: float | None):
    """`store` with `upload_file` held to `bytes_per_s` (None: unchanged): each upload returns no
    sooner than size / bandwidth after it started, and this process's uploads share the bandwidth
    (one at a time), like one worker's link to a remote bucket. Benchmarks only."""
    if not bytes_per_s:
        return store
    upload, link = store.upload_file, threading.Lock()

    def throttled(key, path, part_size=None):
        with link:
            started = time.perf_counter()
            size, sha = upload(key, path, part_size)
            time.sleep(max(0.0, started + size / bytes_per_s - time.perf_counter()))
        return size, sha

    store.upload_file = throttled
    return store


def pace(path: str | None) -> None:
    """Wait the seconds written in the file `path` (tests: a multi-node test keeps a run from
    finishing before the cluster changes it waits for, whatever the machine's speed)."""
    if not path:
        return
    try:
        with open(path) as handle:
            delay = float(handle.read())
    except (OSError, ValueError):
        return
    time.sleep(delay)
