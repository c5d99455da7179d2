"""Named fail points for fault-injection tests.

`SORA_FAILPOINTS=after_shards,before_latest` makes the process die (`os._exit`, no cleanup, like a
killed machine) when it reaches a listed point. Production runs never set the variable; the
check is one environment lookup.
"""

import os
import sys


def fail_point(name: str) -> None:
    points = os.environ.get("SORA_FAILPOINTS", "")
    if points and name in points.split(","):
        print(f"fail point {name!r} reached: exiting", file=sys.stderr, flush=True)
        os._exit(75)
