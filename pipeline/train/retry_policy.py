"""Sora's budgets, applied inside Ray Train's controller: a lost worker or a failed step is retried
there, without relaunching `fit()`.

Ray Train retries a failed worker group itself (`FailureConfig(max_failures=-1)`), which skips what
a relaunch from the driver costs: the old controller's shutdown, a new `TrainController` and
placement-group cleaner (two more Python processes), a fresh resource request (issue 17 item 8:
21 s -> 12 s from a killed worker to the next step, bench/recovery.py). Ray's own policy has one
budget for every worker error, so this controller callback applies Sora's (attempts.py) once per
failure, when the controller moves to `RestartingState`: a lost worker against `max_node_losses`,
an error a worker raised against `max_failures`, a refusal (`ResumeError`, a lost lease) at once.
Raising stops the run: Ray ends `fit()` with a `ControllerError` carrying what was raised here.

Not charged: preemption deaths (a drained node went before its workers returned: Ray's own
preemption budget, unlimited) and worker-group start failures (placement timeouts while Ray's view
of the cluster catches up).

Ray 2.60 internals used (DeveloperAPI, the lock file pins Ray): `ControllerCallback`,
`RestartingState`, the preemption test of the default failure policy. The state-update hook runs
once per controller transition; `UserCallback.after_exception` would run at every health poll
(0.5 s) for as long as a failed group is polled, charging one failure many times.

The counts survive the controller: after every decision they go to
`runs/<run>/attempts/e<lease epoch>.json` (`AttemptLog`) with the messages, which the driver prints (launch.py
`Progress`) and reads back when `fit()` returns.
"""

from __future__ import annotations

import logging

from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import RestartingState
from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure
from ray.train.v2.api.exceptions import WorkerGroupError

from ..errors import UserError
from ..keys import RunKeys
from ..records import AttemptLog
from ..storage import open_store
from .attempts import Attempts, BudgetSpent, user_facing

log = logging.getLogger(__name__)


class BudgetCallback(ControllerCallback):
    """Runs in the controller with the counts so far; `epoch` is the job's run-lease epoch."""

    def __init__(self, attempts: Attempts, events: list[str], root: str, settings: dict, run: str, epoch: int) -> None:
        self.attempts, self.events = attempts, list(events)  # the job's so far (earlier controllers')
        self.root, self.settings, self.run, self.epoch = root, settings, run, epoch
        self.charged = None  # the failure charged last: an elastic restart waiting for room stays in
        # RestartingState, and the controller reports the same state again at every loop
        self.committed: int | None = None  # the newest commit last read from the store

    def after_controller_state_update(self, previous_state, current_state) -> None:
        if not isinstance(current_state, RestartingState):
            return
        error = current_state.training_failed_error
        if error is self.charged or not isinstance(error, WorkerGroupError) or _is_preemption_failure(error):
            return
        self.charged = error
        for failure in error.worker_failures.values():
            clear = user_facing(failure)
            if clear is not failure:
                raise UserError(str(clear))  # a refusal would repeat: stop now
        store = None
        try:
            store = open_store(self.root, self.settings)
            self.committed = newest_commit(store, RunKeys(self.run))
        except Exception as problem:  # noqa: BLE001 - a storage blip must not end the run
            log.warning("run %r: could not list the checkpoints (%s); last seen: %s", self.run, problem, self.committed)
        try:
            what = self.attempts.charge(error, self.committed)
        except WorkerGroupError:
            a = self.attempts
            spent = f"{a.failures} failures (max_failures {a.max_failures}), {a.node_losses} node losses"
            what = f"training stopped after {spent}; the last attempt failed with {_summary(error)}"
            self._save(store, what)
            raise BudgetSpent(what) from None
        self._save(store, f"{what}; resuming from the last committed checkpoint")

    def _save(self, store, what: str) -> None:
        self.events.append(what)
        a = self.attempts
        record = AttemptLog(
            failures=a.failures, node_losses=a.node_losses, loss_commit=a.loss_commit, events=self.events
        )
        try:  # the decision stands even if the store cannot take the note now
            if store is None:
                raise OSError("the store could not be opened")
            record.write(store, self.run, self.epoch)
        except Exception as error:  # noqa: BLE001
            log.warning("run %r: could not record the attempt counts: %s", self.run, error)


def newest_commit(store, keys: RunKeys) -> int | None:
    """The newest committed checkpoint's step (from the listing: no content read)."""
    from .checkpoint import inventory

    return max((c.step for c in inventory(store, keys).sound), default=None)


def load_counts(store, run: str, epoch: int, attempts: Attempts) -> list[str]:
    """The driver: take the counts the last controller wrote (none written: unchanged); returns
    the job's messages so far. The log is per lease epoch: a new job starts with fresh budgets, and
    a controller left over from a job that lost its lease cannot overwrite the next job's."""
    try:
        record = AttemptLog.load(store, run, epoch)
    except Exception as error:  # noqa: BLE001 - never hide fit()'s own outcome
        log.warning("run %r: could not read the attempt counts: %s", run, error)
        record = None
    if record is None:
        return []
    attempts.failures, attempts.node_losses, attempts.loss_commit = (
        record.failures, record.node_losses, record.loss_commit,
    )  # fmt: skip
    return record.events


def _summary(error: WorkerGroupError) -> str:
    lines = []
    for rank, failure in sorted(error.worker_failures.items()):
        text = str(failure).strip().splitlines()
        lines.append(f"rank {rank}: {(text[-1] if text else type(failure).__name__)[:300]}")
    return "; ".join(lines)
