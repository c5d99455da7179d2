"""Object store contracts on `file://` and on a real S3 API server (moto, loopback)."""

import threading
import time

import pytest

from pipeline.errors import UserError
from pipeline.storage import StorageSettings, open_store
from pipeline.storage.lease import LeaseHeldError, acquire_lease


def test_read_write_list(store_root):
    store = open_store(*store_root)
    store.check()
    store.write("a/b/one.bin", b"1")
    store.write("a/two.bin", b"22")
    assert store.read("a/b/one.bin") == b"1"
    assert store.list("a") == ["a/b/one.bin", "a/two.bin"]
    assert store.exists("a/two.bin") and not store.exists("a/three.bin")
    assert store.size("a/two.bin") == 2
    assert store.list("missing") == []
    with pytest.raises(FileNotFoundError):
        store.read("a/nope")


def test_create_if_absent_never_overwrites(store_root):
    store = open_store(*store_root)
    assert store.create("m/v000001.json", b"first")
    assert not store.create("m/v000001.json", b"second")
    assert store.read("m/v000001.json") == b"first"


def test_compare_and_swap(store_root):
    store = open_store(*store_root)
    assert store.read_with_etag("LATEST") is None
    etag = store.swap("LATEST", b"v1", None)
    assert etag and store.swap("LATEST", b"vX", None) is None
    new = store.swap("LATEST", b"v2", etag)
    assert new and store.swap("LATEST", b"v3", etag) is None  # stale tag loses
    assert store.read_with_etag("LATEST") == (b"v2", new)


def test_racing_writers_exactly_one_wins(store_root):
    store = open_store(*store_root)
    etag = store.swap("ptr", b"0", None)
    winners, barrier = [], threading.Barrier(8)

    def writer(i):
        own = open_store(*store_root)
        barrier.wait()
        if own.swap("ptr", f"writer {i}".encode(), etag):
            winners.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.read("ptr") == f"writer {winners[0]}".encode()


def test_lease_excludes_second_writer_and_fences_expired_holder(store_root):
    store = open_store(*store_root)
    first = acquire_lease(store, "_lease", duration_s=60, owner="first", what="refresh")
    with pytest.raises(LeaseHeldError, match="refresh already running: first holds"):
        acquire_lease(store, "_lease", duration_s=60, owner="second", what="refresh")
    first.assert_held()
    first.release()
    second = acquire_lease(store, "_lease", duration_s=0.2, owner="second")
    assert second.epoch == first.epoch + 1
    time.sleep(0.3)
    third = acquire_lease(store, "_lease", duration_s=60, owner="third")  # takes the expired lease
    assert third.epoch == second.epoch + 1
    with pytest.raises(LeaseHeldError, match="lost"):
        second.assert_held()  # fenced: the expired holder may not publish
    with pytest.raises(LeaseHeldError):
        second.renew(60)


def test_bad_uris():
    with pytest.raises(UserError, match="unsupported storage URI"):
        open_store("gs://bucket/x")
    with pytest.raises(UserError, match="bad S3 URI"):
        open_store("s3:///nobucket")


@pytest.mark.s3
def test_missing_bucket_is_a_clear_error(s3_endpoint):
    store = open_store("s3://no-such-bucket/x", StorageSettings(endpoint_url=s3_endpoint))
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        store.check()


@pytest.mark.s3
def test_bad_credentials_are_a_clear_error_without_secrets(s3_endpoint, s3_bucket, deny_bucket, monkeypatch):
    bucket, settings = s3_bucket
    deny_bucket(bucket, s3_endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    store = open_store(f"s3://{bucket}/x", settings)
    with pytest.raises(UserError) as info:
        store.write("k", b"v")
    assert "access denied" in str(info.value) and "very-secret-value" not in str(info.value)
