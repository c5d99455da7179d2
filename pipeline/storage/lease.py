"""A writer lease with expiry and a fencing epoch, built on compare-and-swap.

The lease object is tiny JSON: {owner, epoch, expires_at}. Acquiring succeeds when the object is
absent, expired or released; each acquisition increments `epoch`. A holder passes its epoch to
`assert_held` before publishing, so a writer whose lease expired (and was taken over) is fenced
off instead of publishing over the newer holder's work.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from ..errors import UserError
from .base import ObjectStore


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

    def keep_alive(self, duration_s: float) -> "Heartbeat":
        """Renew in the background every duration/3 until stopped (use as a context manager).

        A short lease plus a heartbeat means a crashed holder blocks others for at most one lease
        duration, while a live holder keeps it for as long as its work takes.
        """
        return Heartbeat(self, duration_s)

    def renew(self, duration_s: float) -> None:
        """Extend the lease; raises if it was lost (expired and taken by another writer)."""
        self._replace(time.time() + duration_s)

    def release(self) -> None:
        """Give the lease up (it expires now); a lost lease is left alone."""
        try:
            self._replace(0.0)
        except LeaseHeldError:
            pass

    def assert_held(self) -> None:
        """Fencing check before a publishing step."""
        current = self.store.read_with_etag(self.key)
        if current is None or current[1] != self.etag:
            raise LeaseHeldError(f"lease {self.store.uri(self.key)} was lost (epoch {self.epoch}); not publishing")
        if time.time() > self.expires_at:
            raise LeaseHeldError(f"lease {self.store.uri(self.key)} expired (epoch {self.epoch}); not publishing")

    def _replace(self, expires_at: float) -> None:
        etag = self.store.swap(self.key, _encode(self.owner, self.epoch, expires_at), self.etag)
        if etag is None:
            raise LeaseHeldError(f"lease {self.store.uri(self.key)} was lost (epoch {self.epoch})")
        self.expires_at, self.etag = expires_at, etag


class Heartbeat:
    def __init__(self, lease: Lease, duration_s: float) -> None:
        self.lease, self.duration_s = lease, duration_s
        self.lost: Exception | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.duration_s / 3):
            try:
                with self._lock:
                    self.lease.renew(self.duration_s)
            except Exception as error:  # lost or storage down: the publish-time fencing check fails
                self.lost = error
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def assert_held(self) -> None:
        if self.lost is not None:
            raise LeaseHeldError(f"lease lost during the run: {self.lost}")
        with self._lock:
            self.lease.assert_held()


def _encode(owner: str, epoch: int, expires_at: float) -> bytes:
    return json.dumps({"owner": owner, "epoch": epoch, "expires_at": expires_at}).encode()


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
    state = json.loads(current[0])
    return LeaseState(state.get("owner"), state.get("epoch"), state["expires_at"])


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
