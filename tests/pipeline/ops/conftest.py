"""A real Ray cluster for the submission tests: `ray start --head` on loopback with token auth, plus a
second (0-CPU) node so the cluster is multi-node, both on free ports; stopped at the end.

The cluster's processes get no AWS credentials and a fresh HOME (no ~/.aws, no ~/.ray token), so a
job can only reach S3 with credentials `sora submit --pass-credentials` gave it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class Head:
    url: str
    token: str
    temp_dir: Path

    def log_files(self) -> list[Path]:
        return [p for p in (self.temp_dir / "session_latest" / "logs").rglob("*") if p.is_file()]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    ray = str(Path(sys.executable).parent / "ray")
    with open(log, "ab") as out:
        return subprocess.Popen([ray, "start", "--block", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:  # anything of this node left in its process group (only processes this fixture started)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    token = secrets.token_hex(32)
    home = tmp_path_factory.mktemp("cluster-home")
    temp_dir = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` = this venv
    )
    gcs, dashboard, client, *node_ports = _free_ports(15)
    common = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats"]

    def node_args(ports: list[int]) -> list[str]:
        names = ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent")
        names += ("node-manager", "object-manager")
        return [f"--{name}-port={port}" for name, port in zip(names, ports, strict=True)]

    log = temp_dir / "start.log"
    head = _start(
        [
            "--head",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--object-store-memory=150000000",
            *common,
            *node_args(node_ports[:6]),
        ],
        env,
        log,
    )
    processes = [head]
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = requests.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2)
                if answer.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        worker = _start(
            [f"--address=127.0.0.1:{gcs}", "--num-cpus=0", "--object-store-memory=80000000", *common,
             *node_args(node_ports[6:12])],
            env,
            log,
        )  # fmt: skip
        processes.append(worker)
        deadline = time.monotonic() + 120
        while _alive_nodes(url, token) < 2:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"second Ray node did not join:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield Head(url=url, token=token, temp_dir=temp_dir)
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _alive_nodes(url: str, token: str) -> int:
    answer = requests.get(
        f"{url}/api/v0/nodes",
        params={"filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    return len(answer.json()["data"]["result"]["result"]) if answer.ok else 0


@pytest.fixture
def with_token(ray_head, monkeypatch, tmp_path):
    """This test's `sora` commands authenticate with the cluster's token (and nothing else)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token of the machine
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    return ray_head
