"""The heartbeat that keeps a writer's `Lease` alive from a background thread (see `lease.py` for
the lease itself): renewals every third of the lease, retried with capped, jittered backoff
through storage faults until the lease would expire, and a prompt, named loss when it is gone."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from .lease import Lease, LeaseHeldError, _describe, _when

log = logging.getLogger(__name__)


class Heartbeat:
    """Keeps a `Lease` alive from a background thread; a context manager.

    Renews every `duration_s / 3`. A failed renewal (storage error, timeout) is retried with
    capped, jittered exponential backoff until the lease would expire (`expires_at - margin_s`,
    default a tenth of the lease). A renewal call that hangs is abandoned at that deadline too.

    The lease is declared lost when another holder took it (renewal refused) or when renewals kept
    failing until the deadline (an attempt that fails at or after it). Then, within one heartbeat:
      * `on_lost(error)`, if given, is called once from the heartbeat thread (keep it short and
        thread-safe: set a flag, signal the driver);
      * then `lost` (a `threading.Event`) is set: long jobs poll `heartbeat.lost.is_set()` (or
        wait on it) between steps and stop promptly;
      * `lost_error` holds the `LeaseHeldError`, whose message names the new holder, and
        `assert_held()` raises it, so the fencing check before publishing fails.
    The heartbeat stops renewing after a loss: it never takes the lease back.
    """

    def __init__(
        self,
        lease: Lease,
        duration_s: float,
        on_lost: Callable[[LeaseHeldError], None] | None = None,
        margin_s: float | None = None,
    ) -> None:
        self.lease, self.duration_s = lease, duration_s
        self.interval_s = duration_s / 3
        self.margin_s = duration_s / 10 if margin_s is None else margin_s
        self.backoff_base_s = min(1.0, duration_s / 60)
        self.backoff_cap_s = max(self.backoff_base_s, min(15.0, duration_s / 6))
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.lost_error: LeaseHeldError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    # -- the heartbeat thread ------------------------------------------------------------------
    def _run(self) -> None:
        next_at = time.time() + self.interval_s
        failures, last_error = 0, None
        while not self._stop.wait(max(0.0, next_at - time.time())):
            deadline = self.lease.expires_at - self.margin_s
            # A heartbeat that woke up late (a starved thread, a suspended process) still tries: the
            # swap only succeeds if nobody took the lease meanwhile, and then it is still ours.
            outcome = self._attempt(max(deadline, time.time() + self.margin_s))
            if self._stop.is_set():
                return
            if outcome is None:
                if failures:
                    log.warning("lease %s renewed after %d failed attempts", self._uri(), failures)
                failures, last_error = 0, None
                next_at = time.time() + self.interval_s
                continue
            if isinstance(outcome, LeaseHeldError):
                self._declare_lost(outcome)
                return
            failures, last_error = failures + 1, outcome
            if time.time() >= deadline:
                self._declare_lost(self._expired_error(failures, last_error))
                return
            delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            # Never sleep past the deadline: near it, try again halfway to it (then give up there).
            remaining = deadline - time.time()
            if delay >= remaining:
                delay = remaining / 2 if remaining > 2 * self.backoff_base_s else max(0.0, remaining)
            log.warning(
                "lease %s: renewal failed (%s); retry %d in %.2fs, lease expires %s",
                self._uri(),
                _describe(outcome),
                failures,
                delay,
                _when(self.lease.expires_at),
            )
            next_at = time.time() + delay

    def _attempt(self, deadline: float) -> BaseException | None:
        """One renewal, run in its own thread so that a hung storage call cannot outlive the lease:
        None on success, the exception otherwise (`TimeoutError` when the deadline passed first)."""
        done = threading.Event()
        result: list[BaseException] = []

        def renew() -> None:
            try:
                self.lease.renew(self.duration_s)
            except BaseException as error:  # noqa: BLE001 - handed to the heartbeat thread
                result.append(error)
            finally:
                done.set()

        threading.Thread(target=renew, name="lease-renewal", daemon=True).start()
        while not done.wait(max(0.0, min(0.1, deadline - time.time()))):
            if self._stop.is_set():
                return None
            if time.time() >= deadline:
                return TimeoutError("renewal still unanswered at the deadline")
        return result[0] if result else None

    def _expired_error(self, failures: int, last_error: BaseException | None) -> LeaseHeldError:
        return LeaseHeldError(
            f"lease {self._uri()} (epoch {self.lease.epoch}) could not be renewed before it expires "
            f"({_when(self.lease.expires_at)}; {failures} failed attempts, last: {_describe(last_error)}); "
            f"another writer may take it over, so this writer stops without publishing"
        )

    def _declare_lost(self, error: LeaseHeldError) -> None:
        self.lost_error = error
        log.error("%s", error)
        try:
            if self.on_lost is not None:
                self.on_lost(error)
        except Exception:  # noqa: BLE001 - a broken callback must not hide the loss
            log.exception("lease on_lost callback failed")
        finally:
            self.lost.set()  # last: whoever sees it also sees lost_error and the callback's effects

    def _uri(self) -> str:
        return self.lease.store.uri(self.lease.key)

    # -- the job's side ------------------------------------------------------------------------
    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def assert_held(self) -> None:
        """Fencing check before publishing: raises `LeaseHeldError` (naming the new holder when there
        is one) if the heartbeat declared the lease lost or the stored lease is no longer ours."""
        if self.lost_error is not None:
            raise LeaseHeldError(f"lease lost during the run: {self.lost_error}")
        self.lease.assert_held()
