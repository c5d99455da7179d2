"""Sora's budgets, applied inside Ray Train's controller: a lost worker or a failed step is retried
there, without relaunching `fit()`.

Ray Train retries a failed worker group itself (`FailureConfig(max_failures=-1)`), which skips what
a relaunch from the driver costs: the old controller's shutdown, a new `TrainController` and
placement-group cleaner (two more Python processes), a fresh resource request (issue 17 item 8
measured each recovery phase). Ray's own policy has one budget for every worker error, so this
callback, run by the controller at every failure before Ray decides, applies Sora's (attempts.py):
a lost worker against `max_node_losses`, an error a worker raised against `max_failures`, a
refusal (`ResumeError`, a lost lease) at once. Raising from the callback stops the run: Ray ends
`fit()` with a `ControllerError` carrying what was raised here.

The counts survive the controller: after every decision they are written to
`runs/<run>/attempts.json`, which the driver reads back when `fit()` returns (after a drain it
starts the next attempt with them).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import ray.train

from ..errors import UserError
from ..keys import RunKeys
from ..storage import open_store
from .attempts import Attempts, BudgetSpent, user_facing


class WorkerFailures(Exception):
    """One failed attempt: each rank's error (the shape `lost_worker` reads)."""

    def __init__(self, worker_failures: dict[int, BaseException]) -> None:
        lines = [f"rank {rank}: {_last_line(error)}" for rank, error in sorted(worker_failures.items())]
        super().__init__("; ".join(lines))
        self.worker_failures = worker_failures


class BudgetCallback(ray.train.UserCallback):
    """Runs in the controller; `attempts` are the counts so far, `committed` the newest committed step."""

    def __init__(self, attempts: Attempts, committed: int | None, root: str, settings: dict, run: str) -> None:
        self.attempts, self.committed = attempts, committed
        self.root, self.settings, self.run = root, settings, run

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:  # workers report only committed checkpoints (worker.py)
            self.committed = max(m.get("step", 0) for m in metrics)

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            clear = user_facing(error)
            if clear is not error:
                raise UserError(str(clear))  # a refusal would repeat: stop now
        failed = WorkerFailures(worker_exceptions)
        try:
            what = self.attempts.charge(failed, self.committed)
        except WorkerFailures:
            self._save()
            a = self.attempts
            spent = f"{a.failures} failures (max_failures {a.max_failures}), {a.node_losses} node losses"
            raise BudgetSpent(f"training stopped after {spent}; the last attempt failed with {failed}") from None
        self._save()
        print(f"{what}; resuming from the last committed checkpoint", flush=True)

    def _save(self) -> None:
        counts = {k: v for k, v in asdict(self.attempts).items() if k != "drains"}
        store = open_store(self.root, self.settings)
        store.write(attempts_key(self.run), json.dumps(counts).encode())


def attempts_key(run: str) -> str:
    return f"{RunKeys(run).prefix}/attempts.json"


def reset_counts(store, run: str) -> None:
    """The driver, at the start of a job: budgets are per job, not per run."""
    if store.exists(attempts_key(run)):
        store.delete(attempts_key(run))


def load_counts(store, run: str, attempts: Attempts) -> None:
    """The driver: take the counts the last controller wrote (none written: unchanged)."""
    try:
        counts = json.loads(store.read(attempts_key(run)))
    except FileNotFoundError:
        return
    for name in ("failures", "node_losses", "loss_commit"):
        setattr(attempts, name, counts.get(name, getattr(attempts, name)))


def _last_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[-1] if lines else type(error).__name__)[:300]
