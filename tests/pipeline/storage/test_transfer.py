"""Whole-file `upload_file` / `download_file` on `file://` and on a real S3 API server (moto, loopback)."""

import hashlib
import os
import subprocess
import sys
import tracemalloc

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline.errors import UserError
from pipeline.storage import StorageSettings, multipart, open_store
from pipeline.storage.files import CHUNK_SIZE

MIB = 1024 * 1024


def _file(tmp_path, name: str, size: int):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_round_trip(store_root, tmp_path):
    store = open_store(*store_root)
    for size in (0, 300_000):
        path, sha = _file(tmp_path, f"src-{size}.bin", size)
        assert store.upload_file(f"ckpt/{size}.bin", path) == (size, sha)
        assert hashlib.sha256(store.read(f"ckpt/{size}.bin")).hexdigest() == sha
        target = tmp_path / "out" / "deep" / f"{size}.bin"
        assert store.download_file(f"ckpt/{size}.bin", target, sha, size) == (size, sha)
        assert target.read_bytes() == path.read_bytes()
    assert _leftovers(tmp_path / "out" / "deep") == []


def test_download_mismatch_leaves_no_file(store_root, tmp_path):
    store = open_store(*store_root)
    path, sha = _file(tmp_path, "src.bin", 200_000)
    store.upload_file("k.bin", path)
    target = tmp_path / "dl" / "k.bin"
    with pytest.raises(ValueError, match=r"k\.bin: sha256 .* does not match the expected 0000"):
        store.download_file("k.bin", target, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match=r"k\.bin.*200000 bytes, expected 5"):
        store.download_file("k.bin", target, sha, expected_size=5)
    assert not target.exists() and _leftovers(target.parent) == []
    target.write_bytes(b"previous")  # a failed download leaves an existing file as it was
    with pytest.raises(ValueError):
        store.download_file("k.bin", target, expected_sha256="0" * 64)
    assert target.read_bytes() == b"previous"
    with pytest.raises(FileNotFoundError):
        store.download_file("missing.bin", tmp_path / "dl" / "missing.bin")


def test_part_size_outside_s3_limits_is_rejected(tmp_path):
    store = open_store("s3://bucket/x", StorageSettings(endpoint_url="http://127.0.0.1:9"))  # never contacted
    for part_size in (MIB, 6 * 1024 * MIB):
        with pytest.raises(ValueError, match="part_size must be between 5 MiB and 5 GiB"):
            store.upload_file("k", tmp_path / "any", part_size=part_size)


@pytest.mark.s3
def test_large_file_goes_up_in_parts(s3_endpoint, s3_bucket, tmp_path):
    bucket, settings = s3_bucket
    store = open_store(f"s3://{bucket}/root", settings)
    path, sha = _file(tmp_path, "big.bin", 12 * MIB)
    assert store.upload_file("ckpt/big.bin", path, part_size=5 * MIB) == (12 * MIB, sha)
    head = store.client.head_object(Bucket=bucket, Key="root/ckpt/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB: a multipart upload
    target = tmp_path / "back.bin"
    assert store.download_file("ckpt/big.bin", target, sha, 12 * MIB) == (12 * MIB, sha)


@pytest.mark.s3
def test_large_write_goes_up_in_parts_and_reads_back_by_range(s3_bucket, monkeypatch):
    """`write` of more than one part (a block's rejects, a map file of a shuffle) is a multipart
    upload: one PutObject is capped at 5 GiB."""
    bucket, settings = s3_bucket
    store = open_store(f"s3://{bucket}/root", settings)
    monkeypatch.setattr(multipart, "PART_SIZE", 5 * MIB)
    body = os.urandom(11 * MIB)
    store.write("tmp/big.bin", body)
    head = store.client.head_object(Bucket=bucket, Key="root/tmp/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB
    assert store.read_range("tmp/big.bin", 5 * MIB - 3, 7) == body[5 * MIB - 3 : 5 * MIB + 4]
    store.delete_prefix("tmp")
    assert store.list("tmp") == []


@pytest.mark.s3
def test_failed_multipart_upload_leaves_no_object_and_no_parts(s3_bucket, tmp_path, monkeypatch):
    bucket, settings = s3_bucket
    store = open_store(f"s3://{bucket}/root", settings)
    path, _ = _file(tmp_path, "big.bin", 12 * MIB)
    real_upload_part = store.client.upload_part

    def flaky_upload_part(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "UploadPart")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(store.client, "upload_part", flaky_upload_part)
    with pytest.raises(ClientError, match="boom"):
        store.upload_file("ckpt/big.bin", path, part_size=5 * MIB)
    assert not store.exists("ckpt/big.bin")
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.s3
def test_transfer_errors_are_clear_user_errors(s3_endpoint, s3_bucket, deny_bucket, tmp_path, monkeypatch):
    path, _ = _file(tmp_path, "big.bin", 6 * MIB)
    missing = open_store("s3://no-such-bucket/x", StorageSettings(endpoint_url=s3_endpoint))
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        missing.upload_file("k", path)
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        missing.upload_file("k", path, part_size=5 * MIB)
    bucket, settings = s3_bucket
    deny_bucket(bucket, s3_endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    denied = open_store(f"s3://{bucket}/x", settings)
    for call in (
        lambda: denied.upload_file("k", path),
        lambda: denied.upload_file("k", path, part_size=5 * MIB),
        lambda: denied.download_file("k", tmp_path / "k"),
    ):
        with pytest.raises(UserError, match="access denied") as info:
            call()
        assert "very-secret-value" not in str(info.value)


# -- memory ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def separate_s3_endpoint():
    """moto in a child process, so tracemalloc here sees only the client side (our code, botocore)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from moto.moto_server.threaded_moto_server import ThreadedMotoServer as S; "
            "s = S(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False); s.start(); "
            "print('ready', flush=True); sys.stdin.read(); s.stop()",
            str(port),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="sora-memory")
        yield endpoint
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.s3
def test_s3_transfers_do_not_hold_the_file_in_memory(separate_s3_endpoint, tmp_path, monkeypatch):
    store = open_store("s3://sora-memory/root", StorageSettings(endpoint_url=separate_s3_endpoint))
    path, sha = _file(tmp_path, "big.bin", 12 * MIB)
    part = 5 * MIB
    monkeypatch.setattr(multipart, "MAX_IN_FLIGHT", 1)  # bound: ~1 part; reading the whole file is 12 MiB
    store.client.head_bucket(Bucket="sora-memory")  # warm the client up outside the measurement
    peak = _peak_bytes(lambda: store.upload_file("big.bin", path, part_size=part))
    assert peak < 2 * part, f"multipart upload peaked at {peak / MIB:.1f} MiB"
    peak = _peak_bytes(lambda: store.download_file("big.bin", tmp_path / "back.bin", sha))
    assert peak < 4 * CHUNK_SIZE, f"download peaked at {peak / MIB:.1f} MiB"
    small, _ = _file(tmp_path, "small.bin", part)  # one put_object, streamed from the file
    peak = _peak_bytes(lambda: store.upload_file("small.bin", small, part_size=part))
    assert peak < 3 * MIB, f"single-request upload peaked at {peak / MIB:.1f} MiB"


def test_local_transfers_do_not_hold_the_file_in_memory(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    path, sha = _file(tmp_path, "big.bin", 12 * MIB)
    assert _peak_bytes(lambda: store.upload_file("big.bin", path)) < 3 * CHUNK_SIZE
    assert _peak_bytes(lambda: store.download_file("big.bin", tmp_path / "back.bin", sha)) < 3 * CHUNK_SIZE
