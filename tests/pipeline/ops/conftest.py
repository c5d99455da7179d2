"""A real Ray cluster for the submission tests: `ray start --head` on loopback with token auth, plus a
second (0-CPU) node so the cluster is multi-node, both on free ports; stopped at the end
(tests/helpers/ray_cluster.py).

The cluster's processes get no AWS credentials and a fresh HOME (no ~/.aws, no ~/.ray token), so a
job can only reach S3 with credentials `sora submit --pass-credentials` gave it.
"""

from __future__ import annotations

import pytest
from ray_cluster import Cluster


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    cluster = Cluster.start(tmp_path_factory.mktemp("cluster-home"), head_cpus=2)
    try:
        cluster.add_node(cpus=0)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def with_token(ray_head, monkeypatch, tmp_path):
    """This test's `sora` commands authenticate with the cluster's token (and nothing else)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token of the machine
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    return ray_head
