"""`data.placement`: the data stage's tasks confined to nodes with a Ray resource or labels.

On a real two-node Ray cluster on loopback (tests/helpers/ray_cluster.py): node A, the head (where
the driver connects), has neither; node B has the resource `sora_data` and the label
`sora.io/role=data`. The real data stage runs with each mechanism and the Ray state API (the head's
dashboard) shows every one of its tasks ran on B; without a placement (no task options at all) the
same run uses A as before. A placement no node satisfies fails before any task, with a message
naming it (at once, or after `wait_s` for an autoscaler).
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from datagen import data_config, make_corpus
from pydantic import ValidationError
from ray_cluster import Cluster

from pipeline.config.data import DataConfig, PlacementConfig
from pipeline.data import placement
from pipeline.data.stage import preprocess
from pipeline.data.summary import Reporter
from pipeline.errors import UserError
from pipeline.records import read_latest
from pipeline.storage import open_store

RESOURCE, LABEL = "sora_data", "sora.io/role"


def test_no_placement_no_options():
    assert DataConfig().placement is None
    placement.configure(DataConfig())  # no cluster check either: Ray is not touched
    assert placement.task_options() == {}


@pytest.mark.parametrize(
    "selector, matches",
    [("data", [True, False, False]), ("!data", [False, True, True]), ("in(data, cpu)", [True, True, False]),
     ("!in(data,cpu)", [False, False, True])],
)  # fmt: skip
def test_label_selector_semantics(selector, matches):
    nodes = [{"Labels": {LABEL: "data"}}, {"Labels": {LABEL: "cpu"}}, {"Labels": {}}]
    assert [placement.eligible(n, PlacementConfig(labels={LABEL: selector})) for n in nodes] == matches


@pytest.mark.parametrize(
    "raw, message",
    [({}, "needs a resource or labels"), ({"resource": "GPU"}, "custom resource"),
     ({"labels": {LABEL: "a b"}}, "not a label selector"), ({"labels": {"-x": "a"}}, "label key")],
)  # fmt: skip
def test_invalid_placement_is_a_config_error(raw, message):
    with pytest.raises(ValidationError, match=message):
        DataConfig(placement=raw)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    ray.shutdown()  # a local Ray of an earlier test would take the stage's tasks instead of the cluster
    cluster = Cluster.start(tmp_path_factory.mktemp("home"), head_cpus=1)
    try:
        args = [f"--address={cluster.address}", "--node-name=data", f"--resources={json.dumps({RESOURCE: 1})}"]
        node = cluster._launch([*args, f"--labels={LABEL}=data"], 1, 80_000_000, None)
        node.node_id = cluster._wait(lambda: cluster.alive_node_ids().get("data"), "data node did not join", node)
        with pytest.MonkeyPatch.context() as patch:  # this process joins as a driver, with the token
            patch.setenv("RAY_AUTH_MODE", "token")
            patch.setenv("RAY_AUTH_TOKEN", cluster.token)
            reset_auth_token_state()  # Ray reads both once per process unless told to read them again
            try:
                yield cluster
            finally:
                ray.shutdown()
                placement.configure(DataConfig())  # later tests of this process: no placement left behind
        reset_auth_token_state()  # back to no auth for the local Ray of later tests
    finally:
        ray.shutdown()
        cluster.close()


def _config(cluster, tmp_path, name, **placement_):
    make_corpus(tmp_path / "corpus")
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "corpus"), name=name, placement=placement_ or None)
    config.ray.address, config.ray.num_cpus = cluster.address, None
    return config


def _tasks(cluster) -> list[dict]:
    """This driver's tasks once the state API has them all finished (task events arrive within ~1 s)."""
    import ray

    if not ray.is_initialized():
        return []
    job_id, deadline, previous = ray.get_runtime_context().get_job_id(), time.monotonic() + 30, None
    while True:
        answer = requests.get(
            f"{cluster.url}/api/v0/tasks",
            params={"detail": "true", "limit": 10000, "filter_keys": "job_id", "filter_predicates": "=",
                    "filter_values": job_id},
            headers=cluster.headers,
            timeout=10,
        )  # fmt: skip
        answer.raise_for_status()
        tasks = [t for t in answer.json()["data"]["result"]["result"] if t["type"] == "NORMAL_TASK"]
        state = sorted((t["task_id"], t["state"]) for t in tasks)
        if state == previous and all(t["state"] == "FINISHED" for t in tasks) or time.monotonic() > deadline:
            return tasks
        previous = state
        time.sleep(1)


PLACEMENTS = {"none": {}, "resource": {"resource": RESOURCE}, "labels": {"labels": {LABEL: "in(data,cpu)"}}}


@pytest.mark.distributed
@pytest.mark.parametrize("mechanism", list(PLACEMENTS))
def test_data_tasks_run_only_on_the_data_node(cluster, tmp_path, mechanism):
    config = _config(cluster, tmp_path, f"placed-{mechanism}", **PLACEMENTS[mechanism])
    before = {t["task_id"] for t in _tasks(cluster)}  # of an earlier test (the driver stays connected)
    manifest = preprocess(config, Reporter(quiet=True))
    assert manifest.version == 1 and manifest.stats.run.docs_kept > 0

    tasks = [t for t in _tasks(cluster) if t["task_id"] not in before]
    assert len(tasks) >= 10 and "read_piece" in {t["name"] for t in tasks}
    ran_on = {t.get("node_id") for t in tasks}
    if mechanism == "none":  # as before: Ray prefers the driver's node A (and may spill over to B)
        assert ran_on - {cluster.nodes[1].node_id}
    else:
        assert ran_on == {cluster.nodes[1].node_id}, [(t["name"], t.get("node_id")) for t in tasks]


@pytest.mark.distributed
@pytest.mark.parametrize(
    "chosen, message",
    [
        ({"resource": "sora_nowhere"}, "has resource 'sora_nowhere'; "),
        ({"labels": {LABEL: "gpu"}}, "has labels {'sora.io/role': 'gpu'}; "),
        ({"resource": RESOURCE, "labels": {LABEL: "!data"}, "wait_s": 1}, "(waited 1 s); "),  # an autoscaler's chance
    ],
)
def test_unsatisfiable_placement_fails_before_any_task(cluster, tmp_path, chosen, message):
    config = _config(cluster, tmp_path, "nowhere", **chosen)
    expected = r"data\.placement: no node of the Ray cluster with CPUs .*" + re.escape(message)
    with pytest.raises(UserError, match=expected):
        preprocess(config, Reporter(quiet=True))
    assert read_latest(open_store(config.storage.root), "nowhere") == (None, None)
