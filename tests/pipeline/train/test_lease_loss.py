"""A training job whose run lease is taken mid-run (another writer, after a network partition made
the lease look expired) stops within a heartbeat or two, names the new holder, commits nothing more,
and leaves the new holder's lease alone. A real `sora pretrain` process with a real TorchTrainer:
the heartbeat thread aborts `fit()` with SIGINT to the driver's main thread (launch.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import yaml
from traingen import train_config

from pipeline.keys import RunKeys
from pipeline.records import last_row
from pipeline.storage import open_store
from pipeline.storage.lease import read_lease_state
from pipeline.train import checkpoint as ckpt

LEASE_S = 6.0  # the heartbeat renews every 2 s


def _take_over(store, key: str, owner: str) -> None:
    """What a second writer does once the lease looks expired: a newer epoch under its name."""
    from pipeline.storage.lease import _encode

    state = read_lease_state(store, key)
    store.write(key, _encode(owner, state.epoch + 1, time.time() + 600))


def test_a_job_whose_lease_is_taken_stops_names_the_holder_and_commits_nothing_more(dataset_root, tmp_path):
    config = train_config(dataset_root, "stolen", max_steps=500, checkpoint_interval=2, log_interval=1,
                          lease_seconds=LEASE_S)  # fmt: skip
    path = tmp_path / "stolen.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    store, keys = open_store(config.storage.root), RunKeys("stolen")
    with open(tmp_path / "driver.log", "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "pretrain", str(path)], stderr=out, stdout=out)
    try:
        deadline = time.monotonic() + 240
        while not ((row := _last(store, keys)) and row.step >= 3):
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        _take_over(store, keys.lease, "intruder")
        taken = time.monotonic()
        committed_before = {c.tag for c in ckpt.inventory(store, keys).sound}
        code = driver.wait(timeout=180)
        stopped_after = time.monotonic() - taken
    finally:
        if driver.poll() is None:
            driver.kill()
    log = (tmp_path / "driver.log").read_text()
    assert code == 2, log[-3000:]
    assert "lost to intruder" in log.splitlines()[-1], log[-3000:]  # the one line it ends with
    assert read_lease_state(store, keys.lease).owner == "intruder"  # left alone
    # The old holder commits nothing after the takeover: every commit checks the lease right before
    # writing COMMITTED, so only a commit already past that check when the lease was taken can land.
    assert len({c.tag for c in ckpt.inventory(store, keys).sound} - committed_before) <= 1
    print(f"\nFIGURES lease taken -> job stopped {stopped_after:.1f} s (lease {LEASE_S:g} s)")
    assert stopped_after < 60


def _last(store, keys):
    try:
        return last_row(store, keys.metrics)
    except (FileNotFoundError, OSError):
        return None
