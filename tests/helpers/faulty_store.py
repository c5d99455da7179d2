"""Real storage faults for tests: a store wrapper, an answer-losing HTTP proxy, a lax S3 client.

* `FaultyStore(inner)` wraps any `ObjectStore` and, for chosen operations, raises a storage error
  N times or for a while (`fail`, `outage`), performs the operation and then raises (`lose_answer`:
  the write landed, the caller never heard), or blocks until released (`stall`: a hung request).
  Everything else goes to the real store.
* `LossyProxy(endpoint)` is an HTTP proxy in front of the S3 server: for chosen requests it
  forwards the request, lets the server act on it, then closes the connection without answering,
  exactly what a dropped connection or a lost response looks like to botocore (which retries).
* `IgnoresConditions(client)` wraps a boto3 S3 client and drops `IfNoneMatch` / `IfMatch` from
  PUTs: a server that ignores conditional writes.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

from pipeline.storage.base import ObjectStore


class StorageFault(OSError):
    """An injected storage error (network down, 5xx after the client's own retries)."""


class FaultyStore(ObjectStore):
    """An `ObjectStore` that injects faults into chosen operations of a real store."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner.root_uri, inner.fs, inner.base)
        self.inner = inner
        self.calls: Counter[str] = Counter()  # operation -> calls made
        self.faults: Counter[str] = Counter()  # operation -> faults injected
        self._plans: dict[str, list[tuple[str, object]]] = {}
        self._outages: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- fault plans ---------------------------------------------------------------------------
    def fail(self, op: str, times: int = 1) -> None:
        """The next `times` calls of `op` raise `StorageFault` without touching the store."""
        self._queue(op, [("fail", None)] * times)

    def lose_answer(self, op: str, times: int = 1) -> None:
        """The next `times` calls of `op` run against the store, then raise `StorageFault`."""
        self._queue(op, [("lose", None)] * times)

    def stall(self, op: str, release: threading.Event) -> None:
        """The next call of `op` blocks until `release` is set, then runs."""
        self._queue(op, [("stall", release)])

    def outage(self, ops: tuple[str, ...], seconds: float) -> None:
        """Every call of `ops` raises `StorageFault` for the next `seconds`."""
        with self._lock:
            for op in ops:
                self._outages[op] = time.time() + seconds

    def _queue(self, op: str, actions: list[tuple[str, object]]) -> None:
        with self._lock:
            self._plans.setdefault(op, []).extend(actions)

    def _call(self, op: str, run: Callable[[], object]) -> object:
        with self._lock:
            self.calls[op] += 1
            plan = self._plans.get(op)
            action, arg = plan.pop(0) if plan else (None, None)
            down = time.time() < self._outages.get(op, 0.0)
            if action in ("fail", "lose") or down:
                self.faults[op] += 1
        if down or action == "fail":
            raise StorageFault(f"injected: {op} failed (storage unreachable)")
        if action == "stall":
            arg.wait()
        result = run()
        if action == "lose":
            raise StorageFault(f"injected: {op} answer lost (the operation was performed)")
        return result

    # -- ObjectStore -----------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        return self._call("read", lambda: self.inner.read(key))

    def exists(self, key: str) -> bool:
        return self._call("exists", lambda: self.inner.exists(key))

    def list(self, prefix: str) -> list[str]:
        return self._call("list", lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        return self._call("delete", lambda: self.inner.delete(key))

    def write(self, key: str, data: bytes) -> None:
        return self._call("write", lambda: self.inner.write(key, data))

    def create(self, key: str, data: bytes) -> bool:
        return self._call("create", lambda: self.inner.create(key, data))

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        return self._call("read_with_etag", lambda: self.inner.read_with_etag(key))

    def swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        return self._call("swap", lambda: self.inner.swap(key, data, expected_etag))

    def upload_file(self, key: str, path: Path, part_size: int | None = None) -> tuple[int, str]:
        return self._call("upload_file", lambda: self.inner.upload_file(key, path, part_size))

    def download_file(self, key, path, expected_sha256=None, expected_size=None) -> tuple[int, str]:
        return self._call("download_file", lambda: self.inner.download_file(key, path, expected_sha256, expected_size))

    def check(self, write: bool = True) -> None:
        return self._call("check", lambda: self.inner.check(write))


class LossyProxy:
    """An HTTP proxy to `upstream` that can lose the answers of chosen requests (a context manager).

    `lose_answers(method, header, times)`: the next `times` requests with that method (and that
    request header, if given) reach the server, which acts on them; the client's connection is
    then closed without a response. `seen` counts requests by (method, has the header).
    """

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self._upstream = (parsed.hostname, parsed.port or 80)
        self._rules: list[list] = []  # [method, header or None, remaining]
        self._lock = threading.Lock()
        self.lost: list[tuple[str, str, int]] = []  # (method, path, upstream status) of lost answers
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                body = self._body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "expect")}
                if body or "Content-Length" in self.headers:
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                if proxy._take(self.command, self.headers):
                    with proxy._lock:
                        proxy.lost.append((self.command, self.path, response.status))
                    self.close_connection = True  # the server acted; the client never hears
                    return
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(name, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="lossy-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def lose_answers(self, method: str, header: str | None = None, times: int = 1) -> None:
        with self._lock:
            self._rules.append([method.upper(), header, times])

    def _take(self, method: str, headers) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule[2] > 0 and rule[0] == method and (rule[1] is None or rule[1] in headers):
                    rule[2] -= 1
                    return True
        return False

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class IgnoresConditions:
    """A boto3 S3 client for a server that ignores conditional-write headers on PUT (or, with
    `ignore=False`, one that only counts PUTs)."""

    def __init__(self, client, ignore: bool = True) -> None:
        self._client = client
        self.ignore = ignore
        self.puts = 0

    def put_object(self, **kwargs):
        self.puts += 1
        if self.ignore:
            kwargs.pop("IfNoneMatch", None)
            kwargs.pop("IfMatch", None)
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str):
        return getattr(self._client, name)
