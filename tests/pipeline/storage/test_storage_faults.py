"""Writers under real storage faults (issue 17, items 6 and 7): heartbeat retries, in-doubt
conditional writes, stale writers stopping, and the conditional-write probe.

Faults are injected around the real stores (`faulty_store.FaultyStore`), on the wire between
botocore and the S3 server (`faulty_store.LossyProxy`), or by a server that ignores conditional
headers (`faulty_store.IgnoresConditions`); the code under test is never mocked.
"""

import json
import threading
import time

import pytest
from faulty_store import FaultyStore, IgnoresConditions, LossyProxy, StorageFault

from pipeline.errors import UserError
from pipeline.storage import StorageSettings, open_store
from pipeline.storage.lease import LeaseHeldError, acquire_lease, read_lease_state


def faulty(tmp_path) -> FaultyStore:
    return FaultyStore(open_store(f"file://{tmp_path}/store"))


def take_over(store, key: str, owner: str, duration_s: float = 60) -> None:
    """Another holder writes the lease object with the next epoch (what `acquire_lease` does once
    it sees the lease expired, e.g. while this holder stalled or its clock lagged)."""
    body, etag = store.read_with_etag(key)
    epoch = json.loads(body)["epoch"] + 1
    new = json.dumps({"owner": owner, "epoch": epoch, "expires_at": time.time() + duration_s}).encode()
    assert store.swap(key, new, etag)


# -- heartbeat retries ---------------------------------------------------------------------------
def test_heartbeat_survives_a_burst_of_renewal_errors_shorter_than_the_lease(tmp_path):
    store = faulty(tmp_path)
    lease = acquire_lease(store, "_lease", 1.5, owner="writer")
    lost = []
    with lease.keep_alive(1.5, on_lost=lost.append) as heartbeat:
        store.outage(("swap",), 0.9)  # the first renewal (at 0.5 s) and its retries fail until 0.9 s
        time.sleep(3.2)  # more than two lease durations: only renewals after the burst kept it
        assert store.faults["swap"] >= 2 and store.calls["swap"] > store.faults["swap"]
        assert not heartbeat.lost.is_set() and lost == []
        heartbeat.assert_held()
        assert lease.expires_at > time.time() + 0.5
    lease.release()
    assert read_lease_state(store, "_lease").expires_at == 0.0


def test_heartbeat_declares_loss_once_the_lease_would_expire(tmp_path):
    store = faulty(tmp_path)
    lease = acquire_lease(store, "_lease", 1.0, owner="writer")
    expires_at = lease.expires_at
    lost = []
    with lease.keep_alive(1.0, on_lost=lambda error: lost.append((time.time(), error))) as heartbeat:
        store.outage(("swap", "read_with_etag"), 60)  # storage stays down
        assert heartbeat.lost.wait(2.0)
        assert len(lost) == 1 and lost[0][1] is heartbeat.lost_error
        assert expires_at - heartbeat.margin_s <= lost[0][0] <= expires_at + 0.1  # expiry minus the margin
        assert store.faults["swap"] >= 3  # it retried before giving up
        time.sleep(0.5)
        calls = store.calls["swap"]
        time.sleep(0.5)
        assert store.calls["swap"] == calls  # stopped renewing
    with pytest.raises(LeaseHeldError, match="could not be renewed before it expires"):
        heartbeat.assert_held()


def test_hung_renewal_is_abandoned_at_the_deadline(tmp_path):
    store = faulty(tmp_path)
    lease = acquire_lease(store, "_lease", 1.0, owner="writer")
    release = threading.Event()
    store.stall("swap", release)  # the first renewal never comes back while the lease runs out
    declared = []
    with lease.keep_alive(1.0, on_lost=lambda error: declared.append(time.time())) as heartbeat:
        assert heartbeat.lost.wait(1.5)
        assert declared[0] <= lease.expires_at + 0.05  # not when the hung call returns
        time.sleep(max(0.0, lease.expires_at - time.time()) + 0.05)
        acquire_lease(store, "_lease", 60, owner="next")  # the lease expired: another writer takes it
        release.set()  # the hung renewal finally reaches the store: refused, "next" keeps the lease
        time.sleep(0.2)
    lease.release()
    assert read_lease_state(store, "_lease").owner == "next"
    with pytest.raises(LeaseHeldError, match="could not be renewed"):
        heartbeat.assert_held()


# -- in-doubt writes -------------------------------------------------------------------------------
def test_renewal_whose_answer_was_lost_is_recognised_as_ours(tmp_path):
    store = faulty(tmp_path)
    lease = acquire_lease(store, "_lease", 60, owner="writer")
    store.lose_answer("swap")
    with pytest.raises(StorageFault):
        lease.renew(60)  # landed, but the caller cannot know
    lease.assert_held()  # the stored lease is still this holder's (owner, epoch)
    lease.renew(60)  # If-Match on the old tag fails; the stored body is ours, so it goes on
    assert read_lease_state(store, "_lease").expires_at == lease.expires_at


def test_heartbeat_keeps_a_lease_whose_renewal_answers_were_lost(tmp_path):
    store = faulty(tmp_path)
    lease = acquire_lease(store, "_lease", 1.2, owner="writer")
    store.lose_answer("swap", times=3)
    with lease.keep_alive(1.2) as heartbeat:
        time.sleep(2.6)
        assert store.faults["swap"] == 3
        assert not heartbeat.lost.is_set()
        heartbeat.assert_held()
    lease.release()


@pytest.mark.s3
@pytest.mark.parametrize("condition", ["create", "swap-absent", "swap"])
def test_conditional_write_whose_answer_was_lost_reports_success(s3_bucket, s3_endpoint, condition):
    bucket, _ = s3_bucket
    key = f"ptr-{condition}"  # the bucket is shared by the parametrizations
    with LossyProxy(s3_endpoint) as proxy:
        store = open_store(f"s3://{bucket}/root", StorageSettings(endpoint_url=proxy.url))
        header = "If-Match" if condition == "swap" else "If-None-Match"
        etag = store.swap(key, b"v1", None) if condition == "swap" else None
        proxy.lose_answers("PUT", header)
        if condition == "create":
            assert store.create(key, b"mine") is True
            result = store.read_with_etag(key)[1]
        else:
            result = store.swap(key, b"mine", etag)
        # The server wrote on the first attempt; botocore retried and got 412; the read-back saw our bytes.
        assert [(m, status) for m, _, status in proxy.lost] == [("PUT", 200)]
        assert sum(m == "PUT" for m, _ in proxy.requests) == (3 if condition == "swap" else 2)
        assert result and store.read_with_etag(key) == (b"mine", result)


@pytest.mark.s3
def test_conditional_write_refused_after_a_retry_is_still_a_lost_race(s3_bucket, s3_endpoint):
    bucket, _ = s3_bucket
    with LossyProxy(s3_endpoint) as proxy:
        store = open_store(f"s3://{bucket}/root", StorageSettings(endpoint_url=proxy.url))
        etag = store.swap("ptr", b"theirs", None)
        proxy.lose_answers("PUT", "If-None-Match")
        assert store.create("ptr", b"mine") is False  # retried, refused, and the bytes are not ours
        proxy.lose_answers("PUT", "If-Match")
        assert store.swap("ptr", b"mine", '"0123456789abcdef0123456789abcdef"') is None
        assert [status for _, _, status in proxy.lost] == [412, 412]
        assert store.read_with_etag("ptr") == (b"theirs", etag)


# -- a stale writer stops --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_stale_writer_learns_of_the_loss_within_one_heartbeat(backend, tmp_path, request):
    if backend == "file":
        store = open_store(f"file://{tmp_path}/store")
    else:
        bucket, settings = request.getfixturevalue("s3_bucket")
        store = open_store(f"s3://{bucket}/root", settings)
    lease = acquire_lease(store, "_lease", 1.5, owner="stale-writer")
    signalled = threading.Event()
    with lease.keep_alive(1.5, on_lost=lambda error: signalled.set()) as heartbeat:
        time.sleep(0.1)
        take_over(store, "_lease", "new-holder")
        taken = time.time()
        # One heartbeat plus scheduling slack: a loaded 2-core CI machine once took a moto round trip
        # past 0.4 s of slack (passes 10 of 10 alone).
        assert heartbeat.lost.wait(heartbeat.interval_s + 1.0)
        assert time.time() - taken <= heartbeat.interval_s + 1.0
        assert signalled.is_set()  # the callback ran before the event was set
        with pytest.raises(LeaseHeldError, match="lost to new-holder"):
            heartbeat.assert_held()
    lease.release()  # leaves the new holder alone
    assert read_lease_state(store, "_lease").owner == "new-holder"


def test_lease_assert_held_names_the_new_holder(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    lease = acquire_lease(store, "_lease", 60, owner="old")
    take_over(store, "_lease", "newer")
    with pytest.raises(LeaseHeldError, match=r"lost to newer \(epoch 2"):
        lease.assert_held()
    with pytest.raises(LeaseHeldError, match="lost to newer"):
        lease.renew(60)


# -- conditional-write probe -----------------------------------------------------------------------
@pytest.mark.s3
def test_probe_accepts_a_server_that_honours_conditional_writes(s3_bucket):
    bucket, settings = s3_bucket
    store = open_store(f"s3://{bucket}/root", settings)
    spy = store.client = IgnoresConditions(store.client, ignore=False)
    store.check()  # moto's server refuses both probes
    assert spy.puts == 3  # the probe object, a second create, a swap on a stale tag
    assert store.list("_sora") == []  # the probe object is deleted
    store.check()
    again = open_store(f"s3://{bucket}/root", settings)
    again.client = IgnoresConditions(again.client, ignore=False)
    again.check()
    assert spy.puts == 3 and again.client.puts == 0  # once per process per bucket/prefix


@pytest.mark.s3
def test_probe_refuses_a_server_that_ignores_conditional_writes(s3_bucket):
    bucket, settings = s3_bucket
    store = open_store(f"s3://{bucket}/root", settings)
    lax = store.client = IgnoresConditions(store.client)
    store.check(write=False)  # read-only use: no probe
    assert lax.puts == 0
    with pytest.raises(UserError) as info:
        store.check()
    message = str(info.value)
    assert message.startswith(f"s3://{bucket}/root does not honour conditional writes (If-None-Match and If-Match)")
    assert "\n" not in message and "leases" in message
    assert store.list("_sora") == []
    probes = lax.puts
    again = open_store(f"s3://{bucket}/root", settings)  # once per process per bucket/prefix
    again.client = IgnoresConditions(again.client)
    with pytest.raises(UserError, match="does not honour conditional writes"):
        again.check()
    assert again.client.puts == 0 and lax.puts == probes
