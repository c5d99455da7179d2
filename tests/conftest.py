"""Test-wide settings: everything runs offline (no model or dataset downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import socket  # noqa: E402

import pytest  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server on loopback (moto's server mode), with fake credentials in the env."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
