"""Test-wide settings: everything runs offline (no model or dataset downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Fake credentials for the loopback S3 server, set before anything (Ray workers included) starts so
# every process inherits them; tests never talk to real AWS.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
os.environ.pop("AWS_PROFILE", None)


import socket  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serialized_moto_server(port: int):
    """moto's threaded S3 server with one request at a time.

    moto evaluates `If-Match` / `If-None-Match` and then writes without a lock (a check-then-act
    window between threads), while real S3 applies a conditional write atomically. Serializing
    requests gives the racing-writer tests S3's semantics instead of moto's window.
    """
    import threading

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class SerializedMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            lock = threading.Lock()

            def serialized(environ, start_response):
                with lock:
                    return list(app(environ, start_response))

            self._server = make_server(
                self._ip_address, self._port, serialized, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return SerializedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server on loopback (moto's server mode)."""
    port = _free_port()
    server = _serialized_moto_server(port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket; returns (bucket name, StorageSettings)."""
    import boto3

    from pipeline.storage import StorageSettings

    name = "sora-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name, StorageSettings(endpoint_url=s3_endpoint)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store_root(request, tmp_path):
    """A storage root on the local filesystem or on the S3 server: (uri, settings)."""
    from pipeline.storage import StorageSettings

    if request.param == "file":
        return f"file://{tmp_path}/store", StorageSettings()
    bucket, settings = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/root", settings


def deny_all(bucket: str, endpoint: str) -> None:
    """Deny every S3 action on `bucket`: the server answers 403, as for a wrong key pair (moto accepts
    any key unless IAM checks are on, so a policy stands in for bad credentials)."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_bucket_policy(
        Bucket=bucket,
        Policy='{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"s3:*",'
        f'"Resource":["arn:aws:s3:::{bucket}","arn:aws:s3:::{bucket}/*"]}}]}}',
    )


@pytest.fixture
def deny_bucket():
    return deny_all
