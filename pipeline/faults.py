"""Named fail points for fault-injection tests.

`SORA_FAILPOINTS=after_shards,before_latest` makes the process die (`os._exit`, no cleanup, like a
killed machine) when it reaches a listed point. Production runs never set the variable; the
check is one environment lookup.
"""

import os
import sys
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
    if not spec or spec != f"{rank}:{step}":
        return
    marker = os.path.join(marker_dir, f"killed-{rank}-{step}")
    if os.path.exists(marker):
        return
    os.makedirs(marker_dir, exist_ok=True)
    open(marker, "w").close()
    print(f"fault injection: killing rank {rank} at step {step}", file=sys.stderr, flush=True)
    os._exit(1)


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
