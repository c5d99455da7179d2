"""A writer lease with expiry and a fencing epoch, built on compare-and-swap.

The lease object is tiny JSON: {owner, epoch, expires_at}. Acquiring succeeds when the object is
absent, expired or released; each acquisition increments `epoch`. A holder passes its epoch to
`assert_held` before publishing, so a writer whose lease expired (and was taken over) is fenced
off instead of publishing over the newer holder's work.

Storage faults: a renewal whose answer was lost (the write landed, the caller saw an error) is
recognised on the next try, because only this holder ever writes a body with its (owner, epoch):
`Lease` adopts that object's tag and goes on. `Heartbeat` retries failed renewals with capped,
jittered exponential backoff until the lease would expire (minus a safety margin), and only then
declares the lease lost; see `Heartbeat` for how a long job learns about a loss.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import UserError
from .base import ObjectStore

if TYPE_CHECKING:
    from .heartbeat import Heartbeat

log = logging.getLogger(__name__)


class LeaseHeldError(UserError):
    """Another writer holds the lease."""


@dataclass
class Lease:
    store: ObjectStore
    key: str
    owner: str
    epoch: int
    expires_at: float
    etag: str
    # Guards the (etag, expires_at) pair: a heartbeat thread renews while the job thread checks.
    _state: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _released: bool = field(default=False, init=False, repr=False, compare=False)

    def keep_alive(
        self,
        duration_s: float,
        on_lost: Callable[[LeaseHeldError], None] | None = None,
        margin_s: float | None = None,
    ) -> Heartbeat:
        """Renew in the background every duration/3 until stopped (use as a context manager).

        A short lease plus a heartbeat means a crashed holder blocks others for at most one lease
        duration, while a live holder keeps it for as long as its work takes. See `Heartbeat` for
        `on_lost` and `margin_s`.
        """
        from .heartbeat import Heartbeat

        return Heartbeat(self, duration_s, on_lost=on_lost, margin_s=margin_s)

    def renew(self, duration_s: float) -> None:
        """Extend the lease; raises `LeaseHeldError` if it was lost (taken by another writer).

        Any other exception is a storage fault: the outcome is unknown and the call may be retried
        (a renewal that landed although its answer was lost is recognised then).
        """
        self._replace(time.time() + duration_s)

    def release(self) -> None:
        """Give the lease up (it expires now); best effort: a lost lease is left alone, and a storage
        fault only means the lease runs out by itself (logged, never raised: this runs in `finally`)."""
        self._released = True
        try:
            self._replace(0.0, releasing=True)
        except LeaseHeldError:
            pass
        except Exception as error:  # noqa: BLE001 - the lease expires on its own
            log.warning("could not release lease %s (it expires by itself): %s", self.store.uri(self.key), error)

    def assert_held(self) -> None:
        """Fencing check before a publishing step."""
        current = self.store.read_with_etag(self.key)
        with self._state:
            if current is not None and current[1] != self.etag:
                self._adopt_if_ours(current)
            if current is None or current[1] != self.etag:
                raise LeaseHeldError(self._lost_message(current, "not publishing"))
            if time.time() > self.expires_at:
                raise LeaseHeldError(f"lease {self.store.uri(self.key)} expired (epoch {self.epoch}); not publishing")

    # -- internals -------------------------------------------------------------------------
    def _replace(self, expires_at: float, releasing: bool = False) -> None:
        body = _encode(self.owner, self.epoch, expires_at)
        for _ in range(3):  # a precondition failure caused by our own landed write is retried
            with self._state:
                expected = self.etag
            etag = self.store.swap(self.key, body, expected)
            if etag is not None:
                with self._state:
                    self.expires_at, self.etag = expires_at, etag
                return
            current = self.store.read_with_etag(self.key)
            with self._state:
                if self._released and not releasing:
                    raise LeaseHeldError(f"lease {self.store.uri(self.key)} was released (epoch {self.epoch})")
                if current is None or not self._adopt_if_ours(current):
                    raise LeaseHeldError(self._lost_message(current))
        raise LeaseHeldError(f"lease {self.store.uri(self.key)}: renewal kept racing (epoch {self.epoch})")

    def _adopt_if_ours(self, current: tuple[bytes, str]) -> bool:
        """If the stored lease is one of this holder's own writes (same owner and epoch: an earlier
        renewal landed although its answer was lost), take its tag and expiry. Under `_state`."""
        state = _decode(current[0])
        if state is None or state.owner != self.owner or state.epoch != self.epoch:
            return False
        self.etag = current[1]
        self.expires_at = state.expires_at
        return True

    def _lost_message(self, current: tuple[bytes, str] | None, consequence: str = "") -> str:
        uri = self.store.uri(self.key)
        tail = f"; {consequence}" if consequence else ""
        if current is None:
            return f"lease {uri} was lost: the lease object is gone (this writer held epoch {self.epoch}){tail}"
        state = _decode(current[0])
        if state is None:
            return f"lease {uri} was lost: the lease object is unreadable (this writer held epoch {self.epoch}){tail}"
        return (
            f"lease {uri} was lost to {state.owner} (epoch {state.epoch}, expires {_when(state.expires_at)}); "
            f"this writer held epoch {self.epoch}{tail}"
        )


def _encode(owner: str, epoch: int, expires_at: float) -> bytes:
    return json.dumps({"owner": owner, "epoch": epoch, "expires_at": expires_at}).encode()


def _decode(body: bytes) -> LeaseState | None:
    try:
        state = json.loads(body)
        return LeaseState(state.get("owner"), state.get("epoch"), float(state["expires_at"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _describe(error: BaseException | None) -> str:
    return "none" if error is None else f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class LeaseState:
    """The lease object's content: who holds it, under which fencing epoch, until when."""

    owner: str | None
    epoch: int | None
    expires_at: float


def read_lease_state(store: ObjectStore, key: str) -> LeaseState | None:
    """The lease object at `key` as it is stored now, or None when there is none."""
    current = store.read_with_etag(key)
    if current is None:
        return None
    state = _decode(current[0])
    if state is None:
        raise ValueError(f"lease object {store.uri(key)} is malformed")
    return state


def default_owner() -> str:
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


def acquire_lease(
    store: ObjectStore, key: str, duration_s: float, owner: str | None = None, what: str = "job"
) -> Lease:
    """Take the lease at `key` or raise `LeaseHeldError` naming the current holder."""
    owner = owner or default_owner()
    current = store.read_with_etag(key)
    expected_etag = None
    epoch = 1
    if current is not None:
        state = json.loads(current[0])
        if state["expires_at"] > time.time():
            remaining = state["expires_at"] - time.time()
            raise LeaseHeldError(
                f"{what} already running: {state['owner']} holds {store.uri(key)} "
                f"(epoch {state['epoch']}, expires in {remaining:.0f}s)"
            )
        expected_etag, epoch = current[1], state["epoch"] + 1
    expires_at = time.time() + duration_s
    etag = store.swap(key, _encode(owner, epoch, expires_at), expected_etag)
    if etag is None:
        raise LeaseHeldError(f"{what} already running: another writer took {store.uri(key)} just now")
    return Lease(store, key, owner, epoch, expires_at, etag)
