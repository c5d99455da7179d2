"""The driver's supervision of one training job across attempts: drains, lost workers, errors.

Ray Train retries a failed worker group inside its controller, and Sora's budgets decide there
(retry_policy.py runs `Attempts.charge` in the controller); this loop relaunches `fit()` after a
drain and decides on what reaches the driver. The kinds of outcome and their budgets:

* a **drain** (a node announced it will go, e.g. a spot reclaim): the workers commit the current
  step and return `{"drained": step}`; the next attempt starts at once on the workers that
  remain (elastic `workers: [min, max]`) or waits for a replacement. Drains cost no budget.
* a **lost worker** (a node or a worker process gone without notice: SIGKILL, OOM kill, a node
  that vanished): expected on preemptible clusters, counted against `max_node_losses`. A lost
  node always counts there; a lost worker *process* on a live node (an OOM kill, a segfault) does
  only while the run moves: with no new committed checkpoint since the previous loss it counts as
  a failure (a worker OOM-killed at every resume repeats, and must stop after `max_failures`).
* an **error** a worker raised (a bug, bad data): it repeats, so it is counted against
  `max_failures` (default 2) and the run stops when that is spent.

Each new attempt resumes from the newest committed checkpoint with whatever worker count Ray
Train can place in `[min, max]`; the data order does not depend on it (loader.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..config.loop import LoopConfig
from ..errors import UserError

# Worker errors that mean "the worker is gone", not "the worker raised": Ray's actor-death and
# health-check failures. Matched by class name so the driver imports no Ray internals.
_LOST = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerHealthCheckFailedError",
         "WorkerHealthCheckTimeoutError", "NodeDiedError", "OwnerDiedError")  # fmt: skip

# What Ray's GCS says when it killed an actor because its node died (gcs_actor_manager).
_NODE_DIED = ("its node has died", "NodeDiedError")


# What a rank raises when a peer of its collective vanished (gloo, NCCL): collateral of a loss.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ncclRemoteError",
              "NCCL communicator was aborted", "remote process exited", "DistNetworkError")  # fmt: skip


def lost_worker(error: BaseException) -> bool:
    """Whether a failed attempt lost a worker (as opposed to a worker raising an error).

    Lost: a worker died (Ray reports its actor or node gone), or every error the attempt reported
    is a collective whose peer vanished (the survivors often report before Ray notices the dead
    worker). An attempt where any rank raised anything else failed: that error would repeat."""
    failures = list((getattr(error, "worker_failures", None) or {}).values())
    if any(_is_loss(e) for e in failures):
        return True
    return bool(failures) and all(any(s in str(e) for s in _PEER_GONE) for e in failures)


def node_lost(error: BaseException) -> bool:
    """Whether a worker of the failed attempt died with its node (not just its process)."""
    failures = list((getattr(error, "worker_failures", None) or {}).values())
    return any(any(mark in _chain_text(e) for mark in _NODE_DIED) for e in failures)


def _chain(error: BaseException):
    """The error and what caused it (Ray's health-check failure wraps the actor's death)."""
    seen = error
    while seen is not None:
        yield seen
        seen = getattr(seen, "health_check_failure", None) or seen.__cause__


def _chain_text(error: BaseException) -> str:
    return "\n".join(f"{type(seen).__name__}: {seen}" for seen in _chain(error))


def _is_loss(error: BaseException) -> bool:
    return any(cls.__name__ in _LOST for seen in _chain(error) for cls in type(seen).__mro__)


class BudgetSpent(RuntimeError):
    """A budget is spent: the run stops with the failure that spent it."""


@dataclass
class Attempts:
    """Counts of what ended each attempt, against the run's budgets."""

    max_failures: int
    max_node_losses: int
    failures: int = 0
    node_losses: int = 0
    drains: list[dict] = field(default_factory=list)  # the workers' drain outcomes
    loss_commit: int | None = None  # the newest committed step when the last loss was counted

    @classmethod
    def of(cls, train: LoopConfig) -> Attempts:
        return cls(train.max_failures, train.max_node_losses)

    def charge(self, error: BaseException, committed: int | None = None) -> str:
        """Count a failed attempt; raise it when its budget is spent, else say what happened.
        `committed`: the run's newest committed step now (None: no checkpoint yet)."""
        progressed = self.node_losses == 0 or committed != self.loss_commit or node_lost(error)
        if lost_worker(error) and progressed:
            self.loss_commit = committed
            self.node_losses += 1
            if self.node_losses > self.max_node_losses:
                raise error
            return f"a worker was lost ({self.node_losses}/{self.max_node_losses} node losses)"
        self.failures += 1
        if self.failures > self.max_failures:
            raise error
        first = str(error).strip().splitlines()[-1:] or [type(error).__name__]
        again = "" if progressed else "a worker was lost again with no new checkpoint since the last loss: "
        return f"{again}a worker failed ({self.failures}/{self.max_failures} failures): {first[0][:300]}"


def supervise(
    fit: Callable[[], Any],
    attempts: Attempts,
    console: Console,
    lease_lost: threading.Event,
    committed: Callable[[], int | None] = lambda: None,
) -> Any:
    """Run `fit()` until an attempt finishes the job; relaunch after drains and failures within
    budget. `committed()`: the run's newest committed step (a loss must make progress to be one)."""
    from ray.train import TrainingFailedError

    while True:
        if lease_lost.is_set():  # lost between attempts: never start another one
            return None
        try:
            result = fit()
        except (SystemExit, KeyboardInterrupt):
            # Ray's SIGINT handler (our abort on a lost lease) may exit; the caller's
            # `assert_held()` then fails the job with the new holder's name instead.
            if _settled(lease_lost):
                return None
            raise
        except TrainingFailedError as error:
            clear = user_facing(error)
            if lease_lost.is_set() or clear is not error:
                raise clear from None  # a lost lease, or a refusal (resume, lease) that would repeat
            spent = getattr(error, "controller_failure", None)
            if isinstance(spent, BudgetSpent):  # decided in the controller (retry_policy.py)
                raise spent from None
            what = attempts.charge(error, committed())
            console.print(f"[yellow]{escape(what)}; resuming from the last committed checkpoint[/yellow]")
            continue
        if lease_lost.is_set():
            return result
        outcome = result.return_value or {}
        if "drained" not in outcome:
            return result
        attempts.drains.append(outcome)
        # The margin left before the node goes: if it runs thin, checkpoint more often or ask the
        # platform for a longer grace period (cluster/README.md).
        left = outcome.get("deadline_left_s")
        margin = f", {left:.0f} s before the drain deadline" if left is not None else ""
        console.print(
            f"[yellow]node drain: step {outcome['drained']} committed on {outcome['world']} workers{margin}; "
            "continuing on the workers that remain[/yellow]"
        )


def _settled(lease_lost: threading.Event, wait_s: float = 5.0) -> bool:
    """Whether the lease was lost (waiting briefly: the abort signal can arrive before the event is set)."""
    return lease_lost.wait(wait_s)


def user_facing(error: Exception) -> Exception:
    """A worker's `ResumeError` / lease loss arrives wrapped by Ray; surface it as the one clear line."""
    seen = error
    while seen is not None:
        if isinstance(seen, UserError):
            return seen
        seen = getattr(seen, "controller_failure", None) or seen.__cause__ or seen.__context__
    text = str(error)
    for marker in ("ResumeError: ", "LeaseHeldError: "):
        if marker in text:
            return UserError(text.split(marker, 1)[1].splitlines()[0])
    return error
