"""A real multi-node Ray cluster on loopback for tests: `ray start --head` with token auth, plus worker
nodes that can be added, drained (`ray drain-node`) and SIGKILLed while a job runs.

Every node is a `ray start --block` process in its own session, with its own ports (node manager,
object manager, dashboard agent, metrics, runtime-env agent) and its own environment, so each node
can have its own node-local cache (`SORA_CACHE`) as on a real cluster. Killing a node kills its
whole process group: the raylet, its object store and every worker process it started.

The cluster's processes get no AWS credentials and a fresh HOME (no ~/.aws, no ~/.ray token).
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
from dataclasses import dataclass, field
from pathlib import Path

import requests

RAY = str(Path(sys.executable).parent / "ray")
_AGENT_PORTS = ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent")
_NODE_PORTS = (*_AGENT_PORTS, "node-manager", "object-manager")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class Node:
    process: subprocess.Popen
    cache: Path | None
    node_id: str | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Cluster:
    """Start with `Cluster.start(...)`; `close()` stops every node it started."""

    temp_dir: Path
    env: dict
    token: str
    gcs_port: int
    url: str
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @classmethod
    def start(cls, home: Path, head_cpus: int = 2, object_store: int = 150_000_000, extra_env=None) -> Cluster:
        token = secrets.token_hex(32)
        temp_dir = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))  # short: Ray's socket paths have a length limit
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "SORA_"))}
        env.update(
            HOME=str(home),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=token,
            RAY_USAGE_STATS_ENABLED="0",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` = this venv
            **(extra_env or {}),
        )
        gcs, dashboard, client = free_ports(3)
        cluster = cls(temp_dir, env, token, gcs, f"http://127.0.0.1:{dashboard}")
        head = [f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
        head += [f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}"]
        try:
            cluster._launch(["--head", *head], head_cpus, object_store, cache=None)
            cluster._wait(lambda: cluster._dashboard_up(), "Ray head did not start")
        except BaseException:
            cluster.close()
            raise
        return cluster

    def add_node(self, cpus: int, cache: Path | None = None, object_store: int = 80_000_000) -> Node:
        """Join a worker node (its own `SORA_CACHE` when `cache` is given); waits until it is alive."""
        name = f"node-{len(self.nodes)}"
        node = self._launch([f"--address={self.address}", f"--node-name={name}"], cpus, object_store, cache)
        node.node_id = self._wait(lambda: self.alive_node_ids().get(name), f"Ray node {name} did not join", node)
        return node

    def _launch(self, args: list[str], cpus: int, object_store: int, cache: Path | None) -> Node:
        env = dict(self.env, **({"SORA_CACHE": str(cache)} if cache else {}))
        ports = [f"--{name}-port={port}" for name, port in zip(_NODE_PORTS, free_ports(6), strict=True)]
        common = ["--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        command = [RAY, "start", "--block", *args, f"--num-cpus={cpus}", "--num-gpus=0"]
        command += [f"--object-store-memory={object_store}", *common, *ports]
        with open(self.temp_dir / "start.log", "ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(process, cache)
        self.nodes.append(node)
        return node

    def _wait(self, ready, what: str, node: Node | None = None, timeout: float = 120):
        node = node or self.nodes[0]
        deadline = time.monotonic() + timeout
        while not (value := ready()):
            if not node.alive or time.monotonic() > deadline:
                log = (self.temp_dir / "start.log").read_text()[-3000:]
                raise RuntimeError(f"{what}:\n{log}")
            time.sleep(0.5)
        return value

    def _dashboard_up(self) -> bool:
        try:
            return requests.get(f"{self.url}/api/version", headers=self.headers, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def alive_node_ids(self) -> dict[str, str]:
        """{node name: node id} of the alive nodes (names given at `ray start --node-name`)."""
        answer = requests.get(
            f"{self.url}/api/v0/nodes",
            params={"filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE"},
            headers=self.headers,
            timeout=5,
        )
        nodes = answer.json()["data"]["result"]["result"] if answer.ok else []
        return {n["node_name"]: n["node_id"] for n in nodes}

    def drain(self, node: Node, deadline_s: int) -> None:
        """Announce a preemption of `node` with a deadline, as a cloud autoscaler or KubeRay would."""
        command = [RAY, "drain-node", f"--address={self.address}", f"--node-id={node.node_id}"]
        command += ["--reason=DRAIN_NODE_REASON_PREEMPTION", "--reason-message=test preemption"]
        command += [f"--deadline-remaining-seconds={deadline_s}"]
        subprocess.run(command, env=self.env, check=True, capture_output=True, timeout=60)

    def kill(self, node: Node) -> None:
        """SIGKILL every process of the node (raylet, object store, workers): a machine that vanished."""
        try:
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.process.wait(timeout=30)

    def stop(self, node: Node) -> None:
        if node.alive:
            node.process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of this node left in its process group (only processes this helper started)
            os.killpg(node.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_files(self) -> list[Path]:
        return [p for p in (self.temp_dir / "session_latest" / "logs").rglob("*") if p.is_file()]

    def close(self) -> None:
        for node in reversed(self.nodes):
            self.stop(node)
        keep = os.environ.get("SORA_KEEP_CLUSTER_LOGS")  # debugging: where to copy Ray's logs
        if keep:
            shutil.copytree(self.temp_dir / "session_latest" / "logs", keep, dirs_exist_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
