"""Start or join Ray once per process, quietly (Ray's own logs stay in its session folder)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

from .config.run import RayConfig

# How often the Ray Train controller polls its workers, so how long a dead worker goes unnoticed
# (Ray's default 2 s: 1 s of every restart on average). Read from the driver's environment when a
# job starts (Ray Train passes it on to its controller); a value set by the user wins.
HEALTH_CHECK_INTERVAL_S = "0.5"


def ensure_ray(config: RayConfig) -> None:
    import ray

    from .console_log import note, quiet_library_handlers

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    if ray.is_initialized():
        return
    # Ray's logger prints on the terminal (its token-authentication warning at `ray.init`, for one):
    # its warnings go to the log file, its errors stay on the terminal.
    quiet_library_handlers()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    if config.address:
        started = ray.init(address=config.address, **kwargs)
    else:
        # The local cluster's workers inherit this environment: DeepSpeed's JIT-built ops (the CPU
        # shared-memory comm op, built when a worker initializes DeepSpeed) go to a folder of this
        # virtualenv's own. In torch's shared default folder, two checkouts on one machine rebuild
        # the op for each other (their include paths differ): 25-75 s on 2 cores, and a worker
        # restarting meanwhile waits for it in `deepspeed.init_distributed`.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_extensions_dir()))
        started = ray.init(num_cpus=config.num_cpus, include_dashboard=False, **kwargs)
    # The workers' stdout and stderr (lm-eval's and transformers' progress bars, their warnings)
    # stay in the Ray session's logs (log_to_driver=False); the log file says where they are.
    session = getattr(started, "address_info", {}).get("session_dir")  # a Ray Client (ray://) has none
    if session:
        where = f"{session}/logs" + (" on each node" if config.address else "")
        note(f"Ray workers' output (progress bars, warnings, tracebacks): {where}")
    import ray.data

    quiet_library_handlers()  # Ray Data's and Ray Train's loggers, added by these imports

    context = ray.data.DataContext.get_current()
    # Progress bars on a terminal; without one Ray Data would log a status line every few seconds.
    interactive = sys.stderr.isatty()
    context.enable_progress_bars = interactive
    if not interactive:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    context.print_on_execution_start = False
    context.verbose_stats_logs = False


def get_result(ref):
    """`ray.get(ref)`; a `UserError` raised in the task (bad input, a missing optional package)
    re-raised as itself, so the user reads its one line, not a Ray traceback."""
    import ray

    from .errors import UserError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise error.cause from None
        raise


def _extensions_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "torch_extensions" / f"venv-{hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]}"
