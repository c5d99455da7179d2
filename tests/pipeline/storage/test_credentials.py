"""S3 credentials are never frozen or pickled: they rotate under a long run, and Ray workers get none.

The rotation test turns on moto's IAM checks, so a revoked key really is refused. Credentials come
from a container credentials endpoint on loopback (the EKS Pod Identity / ECS task role mechanism),
which both boto3 and pyarrow's AWS SDK poll and refresh before expiry.
"""

import datetime
import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import ClientError

from pipeline.storage import open_store


@pytest.mark.s3
def test_nothing_handed_to_ray_carries_a_secret(s3_bucket, monkeypatch):
    bucket, settings = s3_bucket
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-0d8f1c2b")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-7be41a99")
    store = open_store(f"s3://{bucket}/root", settings)
    store.write("k", b"v")
    assert store.read("k") == b"v"  # pyarrow has resolved the credentials by now
    for handed_over in (store.fs, settings):
        blob = pickle.dumps(handed_over)
        assert b"secret-0d8f1c2b" not in blob and b"token-7be41a99" not in blob
    worker_fs = pickle.loads(pickle.dumps(store.fs))  # what a Ray worker gets still works
    with worker_fs.open_input_stream(store.path("k")) as stream:
        assert stream.read() == b"v"


@pytest.fixture
def iam_checks(monkeypatch):
    """Make the moto server verify signatures and keys (it accepts any key by default)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    def enable():
        monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
        monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)

    return enable  # monkeypatch turns the checks off again after the test


class _CredentialsEndpoint(ThreadingHTTPServer):
    """Serves `self.current` credentials, expiring in a few seconds so every request re-fetches them."""

    def __init__(self):
        self.current: dict = {}
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                # Inside both SDKs' refresh windows (pyarrow: 5 s before expiry, boto3: 10 min).
                expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
                body = json.dumps({**server.current, "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.s3
def test_store_keeps_working_when_role_credentials_rotate(s3_endpoint, s3_bucket, iam_checks, monkeypatch, tmp_path):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sts.models import sts_backends

    bucket, settings = s3_bucket
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    role = f"writer-{bucket}"[:64]
    trust = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
    arn = iam.create_role(
        RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]})
    )["Role"]["Arn"]
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    iam.put_role_policy(
        RoleName=role, PolicyName="s3", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [allow]})
    )
    sts = boto3.client("sts", endpoint_url=s3_endpoint, region_name="us-east-1")
    old, new = (sts.assume_role(RoleArn=arn, RoleSessionName=name)["Credentials"] for name in ("old", "new"))

    endpoint = _CredentialsEndpoint()
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        endpoint.current = _container_json(old)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{endpoint.server_port}/creds")
        iam_checks()

        store = open_store(f"s3://{bucket}/root", settings)
        store.write("a", b"1")  # boto3
        assert store.read("a") == b"1"  # pyarrow
        fetched = endpoint.fetches

        # Rotate: the old session is revoked (as when it expires) and the endpoint hands out the new one.
        roles = sts_backends[DEFAULT_ACCOUNT_ID]["aws"].assumed_roles
        roles[:] = [r for r in roles if r.access_key_id != old["AccessKeyId"]]
        endpoint.current = _container_json(new)
        with pytest.raises(ClientError, match="InvalidAccessKeyId"):  # the old key really is refused now
            _client(s3_endpoint, old).get_object(Bucket=bucket, Key="root/a")

        store.write("b", b"2")
        assert store.read("b") == b"2" and store.list("") == ["a", "b"]
        assert endpoint.fetches > fetched
    finally:
        endpoint.shutdown()
        endpoint.server_close()


def _container_json(credentials: dict) -> dict:
    return {
        "AccessKeyId": credentials["AccessKeyId"],
        "SecretAccessKey": credentials["SecretAccessKey"],
        "Token": credentials["SessionToken"],
    }


def _client(endpoint: str, credentials: dict):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
