"""What `sora` prints is Sora's: libraries' warnings and log lines go to a log file, not the terminal.

Every command runs inside `library_output_to_log(command)` (pipeline/cli.py). While it is active:

- the log file `<log dir>/<command>-<UTC time>-<pid>.log` receives every log record that reaches
  Python's logging at the levels the libraries set (WARNING by default) and Python warnings
  (`logging.captureWarnings`); the log dir is `$SORA_LOG_DIR`, else `.sora-logs/` in the working
  directory (beside the default storage root `.sora/`; object storage is no place for a log that is
  written line by line; where it cannot be written, the temp folder). The file is created at its
  first record and its path printed then, once; logs beyond the newest `KEEP_LOGS` are deleted
  once older than `KEEP_DAYS`;
- the terminal keeps Sora's own log records (loggers `pipeline.*` and `sora.*`, WARNING and up) and
  any library's errors;
- a library that prints through its own terminal handler (Ray's `ray` logger, torch's, DeepSpeed's,
  lm-eval's once set up) has that handler raised to ERROR and the log file added beside it:
  `quiet_library_handlers()`, run after each top-level package's import (pipeline/after_import.py)
  and by `ensure_ray` before `ray.init`;
- Hugging Face's progress bars (`datasets`' "Generating test split", `huggingface_hub` downloads)
  are off in this process and in the processes it starts (their environment switches).

Progress bars of the libraries that run in Ray tasks (lm-eval's "Running loglikelihood requests",
transformers' "Loading checkpoint shards") and everything else those processes print go to the Ray
session's log folder (`ray.init(log_to_driver=False)`), which `ensure_ray` names in the log file.
Errors still reach the terminal: a failing task's exception is re-raised in this process, and
`sora` prints a `UserError` as one line.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .after_import import calling_after_imports

LOG_DIR_ENV = "SORA_LOG_DIR"
DEFAULT_LOG_DIR = ".sora-logs"
OWN_LOGGERS = ("pipeline", "sora")  # their warnings are Sora's to show
KEEP_LOGS = 20
KEEP_DAYS = 7
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Read by the libraries when they are imported (here and in the Ray workers started from here).
PROGRESS_SWITCHES = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)


class _AnnouncedFileHandler(logging.FileHandler):
    """A log file opened at its first record, when its path is printed on the terminal once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True, encoding="utf-8")
        self.path = path
        self.setFormatter(logging.Formatter(FILE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not self._open_announced():
            return
        super().emit(record)

    def _open_announced(self) -> bool:
        """Open the file (its folder made, old logs pruned) and print its path; where it cannot be
        written (a read-only working directory), use the temp folder, and if that fails too drop
        library records rather than raise into the library that logged."""
        for path in (self.path, Path(tempfile.gettempdir()) / DEFAULT_LOG_DIR / self.path.name):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.baseFilename, self.path = os.fspath(path), path
                self.stream = self._open()
            except OSError:
                continue
            _prune(path.parent, keep=path)
            print(f"library warnings and logs: {path}", file=sys.stderr, flush=True)
            return True
        return False


def _prune(directory: Path, keep: Path) -> None:
    """Delete logs older than `KEEP_DAYS` beyond the newest `KEEP_LOGS` (one file per command adds
    up). By age, not count alone: a long command that rarely writes keeps its open file while many
    short commands come and go."""
    cutoff = time.time() - KEEP_DAYS * 86400
    try:
        logs = sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in logs[KEEP_LOGS:]:
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
    except OSError:  # another command pruning at the same time: its turn
        pass


class _ForwardTo(logging.Handler):
    """Hands records to another handler. Beside a library's own handlers: Ray's `ray.init` sets the
    formatter of every handler of its logger, which must not be the log file's."""

    def __init__(self, target: logging.Handler) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


class _SoraOrErrors(logging.Filter):
    """What the terminal shows: Sora's own records from WARNING, a library's from ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".", 1)[0] in OWN_LOGGERS
        return record.levelno >= (logging.WARNING if own else logging.ERROR)


class _Routing:
    """The handlers one `library_output_to_log` installed, and what it changed, to undo on exit."""

    def __init__(self, path: Path) -> None:
        self.file = _AnnouncedFileHandler(path)
        self.terminal = logging.StreamHandler(sys.stderr)
        self.terminal.addFilter(_SoraOrErrors())
        self.handler_levels: dict[logging.Handler, int] = {}  # library terminal handlers raised to ERROR
        self.forward = _ForwardTo(self.file)
        self.forward_added_to: list[logging.Logger] = []
        self.environment_set: list[str] = []  # progress switches this routing set (unset on exit)

    def quiet(self, logger: logging.Logger) -> None:
        terminal = [h for h in logger.handlers if _writes_to_terminal(h)]
        for handler in terminal:
            if handler not in self.handler_levels:
                self.handler_levels[handler] = handler.level
                handler.setLevel(max(handler.level, logging.ERROR))
        # Such a logger often stops propagation (Ray's does), so its records would miss the root's file.
        if terminal and not logger.propagate and self.forward not in logger.handlers:
            logger.addHandler(self.forward)
            self.forward_added_to.append(logger)

    def undo(self) -> None:
        for name in self.environment_set:
            os.environ.pop(name, None)
        for handler, level in self.handler_levels.items():
            handler.setLevel(level)
        for logger in self.forward_added_to:
            logger.removeHandler(self.forward)
        root = logging.getLogger()
        root.removeHandler(self.file)
        root.removeHandler(self.terminal)
        self.file.close()


_active: _Routing | None = None


def _writes_to_terminal(handler: logging.Handler) -> bool:
    # A stream handler that is no file handler: a library's own console output (Ray's handler
    # holds the `sys.stderr` of its import, which need not be today's `sys.stderr`).
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def quiet_library_handlers() -> None:
    """Raise the terminal handlers of every library logger that exists now to ERROR and send their
    records to the log file (no-op outside `library_output_to_log`). Libraries add their handlers
    when imported, so call this again after importing one that prints through its own."""
    if _active is None:
        return
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.name.split(".", 1)[0] not in OWN_LOGGERS:
            _active.quiet(logger)


def note(message: str) -> None:
    """Write `message` into the log file only (e.g. where else libraries' output went)."""
    if _active is not None:
        record = logging.makeLogRecord({"name": "sora", "levelno": logging.INFO, "levelname": "INFO", "msg": message})
        _active.file.handle(record)


@contextmanager
def library_output_to_log(command: str) -> Iterator[Path]:
    """Route libraries' warnings, log records and progress bars away from the terminal (module
    docstring) while the block runs; yields the log file's path (created at its first record)."""
    global _active
    if _active is not None:  # nested (a command that runs another in-process): the outer one routes
        yield _active.file.path
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    routing = _Routing(log_dir().resolve() / f"{command}-{stamp}-{os.getpid()}.log")
    for name, value in PROGRESS_SWITCHES.items():
        if name not in os.environ:  # a user's own setting wins
            os.environ[name] = value
            routing.environment_set.append(name)
    root = logging.getLogger()
    root.addHandler(routing.file)
    root.addHandler(routing.terminal)
    _active = routing
    # catch_warnings restores the warning filters and `showwarning` on exit; a library imported
    # meanwhile has its terminal handlers quieted as soon as its import finished.
    with warnings.catch_warnings(), calling_after_imports(quiet_library_handlers):
        logging.captureWarnings(True)
        try:
            quiet_library_handlers()
            yield routing.file.path
        finally:
            logging.captureWarnings(False)
            _active = None
            routing.undo()
