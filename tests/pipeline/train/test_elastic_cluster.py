"""Elastic training on a real multi-node Ray cluster on loopback (token auth, storage on the moto S3
server, a node-local SORA_CACHE per node): a drained node, a fresh node joining, a node SIGKILLed.

One run of `sora pretrain` with `workers: [1, 2]` lives through all three, in this order:
  1. `ray drain-node` (preemption, deadline 60 s) on one of the two worker nodes mid-run: the
     workers commit the current step and the next attempt trains on the remaining node, resuming
     from that very step (no step redone); then the drained node goes away (the reclaim);
  2. a fresh node with an empty cache joins: the group grows back to 2 workers;
  3. every process of one worker node is SIGKILLed: training continues on 1 worker from the last
     commit, counted as a node loss (not a failure).
The sample ids of every step equal the uninterrupted sequence (a pure function of the seed), no
step is missing or doubled, and the losses before the first fault equal an uninterrupted run's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from ray_cluster import Cluster
from traingen import expected_ids, train_config

from pipeline.keys import RunKeys
from pipeline.pretrain.launch import pretrain
from pipeline.records import last_row, read_dataset
from pipeline.storage import open_store
from pipeline.train import checkpoint as ckpt
from pipeline.train.metrics import read_rows

pytestmark = [pytest.mark.distributed, pytest.mark.s3, pytest.mark.timeout(1200)]

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
STEPS = 64


def _wait(what: str, condition, driver: subprocess.Popen, log, timeout: float = 240, store=None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if driver.poll() is not None or time.monotonic() > deadline:
            if store is not None:  # the steps so far, with their world size and time
                rows = read_rows(store, "runs/elastic/metrics")
                print([(r["step"], r.get("workers"), round(r["time"] % 1000, 1)) for r in rows])
            raise AssertionError(f"waiting for {what}: driver rc={driver.poll()}\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


def _row(store, run):
    try:
        return last_row(store, RunKeys(run).metrics)
    except (FileNotFoundError, OSError):
        return None


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster.start(tmp_path / "home", head_cpus=0, extra_env=CREDENTIALS)
    try:
        yield cluster
    finally:
        cluster.close()


def test_drain_join_and_node_loss_keep_the_exact_sample_sequence(cluster, s3_bucket, tmp_path, ray_session):
    from datagen import data_config, make_corpus

    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter

    bucket, settings = s3_bucket
    make_corpus(tmp_path / "corpus")
    data = data_config(f"s3://{bucket}/sora", str(tmp_path / "corpus"), settings=settings)
    preprocess(data, Reporter(quiet=True))
    node_a = cluster.add_node(cpus=1, cache=tmp_path / "cache-a")
    node_b = cluster.add_node(cpus=1, cache=tmp_path / "cache-b")

    options = dict(max_steps=STEPS, checkpoint_interval=8, eval_interval=STEPS, keep_last=20, log_interval=1,
                   global_batch=64, micro_batch=8)  # fmt: skip
    config = train_config(data, "elastic", workers=[1, 2], record_sample_ids=True, resize_interval_s=5,
                          placement_timeout_s=8, **options)  # fmt: skip
    raw = config.model_dump(mode="json")
    raw["ray"] = {"address": cluster.address}
    (tmp_path / "elastic.yaml").write_text(yaml.safe_dump(raw))
    # Each step waits the seconds in this file: slow while the test waits for the cluster to change
    # (Ray notices a joining node within ~20 s), fast once it has seen what it waits for, so the run
    # can neither finish early on a fast machine nor take long on a slow one.
    pace = tmp_path / "pace"
    pace.write_text("0.5")
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, SORA_STEP_PACE_FILE=str(pace),
               **CREDENTIALS)  # fmt: skip
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "pretrain", str(tmp_path / "elastic.yaml")],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    store = open_store(config.storage.root, settings)
    keys = RunKeys("elastic")
    try:
        # 1. Drain node B mid-run (deadline 60 s).
        _wait("two workers", lambda: (r := _row(store, "elastic")) and r.workers == 2, driver, log, store=store)
        drained_at = time.time()
        cluster.drain(node_b, deadline_s=60)
        match = _wait("the drain commit", lambda: re.search(r"node drain: step (\d+) committed", log.read_text()),
                      driver, log)  # fmt: skip
        drain_step = int(match.group(1))
        pace.write_text("3.0")  # until the group has grown back (a node joins, Ray sees it, resizes)
        one = _wait(
            "training on one worker", lambda: (r := _row(store, "elastic")) and r.workers == 1 and r, driver, log
        )
        back_after_drain = one.time - drained_at
        cluster.kill(node_b)  # the reclaim
        # 2. A fresh node (empty cache) joins: the group grows back to two workers.
        cluster.add_node(cpus=1, cache=tmp_path / "cache-c")
        _wait("two workers again", lambda: (r := _row(store, "elastic")) and r.workers == 2 and r.step > one.step,
              driver, log, timeout=120, store=store)  # fmt: skip
        pace.write_text("0.3")
        assert list((tmp_path / "cache-c" / "shards").glob("*.arrow")), "the joining node streams into its own cache"
        # 3. SIGKILL every process of node A.
        _wait("a step on two workers", lambda: (r := _row(store, "elastic")) and r.step >= drain_step + 4, driver, log)
        killed_at = time.time()
        cluster.kill(node_a)
        again = _wait("training after the node loss",
                      lambda: (r := _row(store, "elastic")) and r.time > killed_at and r.workers == 1 and r,
                      driver, log)  # fmt: skip
        back_after_loss = again.time - killed_at
        pace.write_text("0")
        assert driver.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    output = log.read_text()
    assert "a worker was lost (1/10 node losses)" in output, output[-4000:]

    rows = read_rows(store, keys.metrics)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # every step once, none skipped
    resumed = [r["step"] for r in rows if "resume_download_bytes" in r]
    assert drain_step + 1 in resumed  # the attempt after the drain started right after the drained step
    assert drain_step in [c.step for c in ckpt.inventory(store, keys).sound]
    worlds = [r["workers"] for r in rows]
    assert worlds[:drain_step] == [2] * drain_step and 1 in worlds and worlds[-1] == 1
    manifest = read_dataset(store, "test", "LATEST")
    batch = config.train.global_batch
    recorded = read_rows(store, keys.samples)
    assert [r["step"] for r in recorded] == list(range(1, STEPS + 1))
    for r in recorded:
        assert r["ids"] == expected_ids(manifest, config.train.seed, (r["step"] - 1) * batch, batch), r["step"]

    # Losses before the first fault equal an uninterrupted 2-worker run's (on the local Ray).
    reference = train_config(data, "reference", workers=2, stop_after_steps=drain_step, **options)
    pretrain(reference, quiet=True)
    expected = [r["loss"] for r in read_rows(store, RunKeys("reference").metrics)]
    np.testing.assert_allclose([r["loss"] for r in rows[:drain_step]], expected, rtol=1e-6)
    print(f"\nFIGURES drain->training again {back_after_drain:.1f} s (drain at step {drain_step}); "
          f"node SIGKILL->training again {back_after_loss:.1f} s")  # fmt: skip
