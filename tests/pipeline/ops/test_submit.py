"""`sora submit` and `sora jobs` against a real Ray cluster (conftest: token auth, two nodes).

Outcomes are checked where they land: the manifest in storage, the job's status and logs as the
Jobs API reports them, the cluster's own log files.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
import yaml
from datagen import make_documents, write_jsonl

from pipeline.cli import main

pytestmark = pytest.mark.distributed

DATA = {
    "seq_len": 32,
    "tokenizer": {"vocab_size": 300, "sample_bytes": 1 << 20},
    "split": {"val_fraction": 0.1, "heldout_fraction": 0.05},
    "filters": {"max_doc_bytes": 20000, "min_chars": 8},
    "shard_bytes": 1 << 16,
    "dedup": {"near": False},
}


def write_config(path, root: str, source: str, name: str = "jobdata", **storage) -> str:
    config = {
        "storage": {"root": root, **storage},
        "data": {"name": name, "sources": [{"kind": "jsonl", "uri": source}], **DATA},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two small jsonl files: the jobs test submission, not the data stage (tested elsewhere)."""
    directory = tmp_path_factory.mktemp("corpus")
    docs = make_documents(n=80)
    write_jsonl(directory / "part-0.jsonl", docs[:40])
    write_jsonl(directory / "part-1.jsonl", docs[40:])
    return directory


def sora(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def wait_for(address: str, job_id: str, wanted: set[str], timeout: float = 180) -> str:
    from pipeline.ops.cluster import job_client

    client = job_client(address)
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(job_id).value)) not in wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def test_preprocess_job_succeeds_and_streams_logs(with_token, corpus, tmp_path, capsys):
    head = with_token
    root = tmp_path / "store"
    config = write_config(tmp_path / "job.yaml", str(root), str(corpus / "*.jsonl"))
    started = time.monotonic()
    code, out, err = sora(capsys, "submit", config, "--stage", "preprocess", "--address", head.url,
                          "--allow-local-storage", "--follow")  # fmt: skip
    elapsed = time.monotonic() - started
    assert code == 0, out + err
    job_id = out.splitlines()[0].split()[-1]
    assert out.startswith("submitted job sora-preprocess-")
    assert "dataset jobdata v1" in out  # the job's own output, streamed by --follow
    assert f"job {job_id} SUCCEEDED" in err
    manifest = json.loads((root / "datasets/jobdata/manifests/v000001.json").read_text())
    assert manifest["dataset"] == "jobdata" and manifest["shards"]["train"]
    assert (root / "datasets/jobdata/LATEST").exists()
    code, out, _ = sora(capsys, "jobs", "status", job_id, "--address", head.url)
    assert code == 0 and f"job {job_id}: SUCCEEDED" in out
    code, out, _ = sora(capsys, "jobs", "list", "--address", head.url)
    assert code == 0 and any(line.startswith(job_id) and "SUCCEEDED" in line for line in out.splitlines())
    code, out, _ = sora(capsys, "jobs", "logs", job_id, "--address", head.url)
    assert code == 0 and "dataset jobdata v1" in out
    print(f"submitted preprocess job: {elapsed:.1f}s from submit to SUCCEEDED")


def test_failing_job_is_reported_with_its_last_lines(with_token, tmp_path, capsys):
    head = with_token
    config = write_config(tmp_path / "job.yaml", str(tmp_path / "store"), str(tmp_path / "missing" / "*.jsonl"))
    code, out, err = sora(capsys, "submit", config, "--stage", "preprocess", "--address", head.url,
                          "--allow-local-storage", "--follow")  # fmt: skip
    job_id = out.splitlines()[0].split()[-1]
    assert code == 1 and f"job {job_id} FAILED" in err
    code, out, _ = sora(capsys, "jobs", "status", job_id, "--address", head.url)
    assert code == 0 and f"job {job_id}: FAILED" in out
    last_lines = out.split("last log lines:\n", 1)[1]
    assert "sora preprocess: error:" in last_lines and "missing" in last_lines
    assert "Traceback" not in last_lines  # a user error: one clear line


def test_stop_stops_a_running_job_and_nothing_is_published(with_token, corpus, tmp_path, capsys):
    head = with_token
    root = tmp_path / "store"
    config = write_config(tmp_path / "job.yaml", str(root), str(corpus / "*.jsonl"))
    code, out, err = sora(capsys, "submit", config, "--stage", "preprocess", "--address", head.url,
                          "--allow-local-storage")  # fmt: skip
    assert code == 0, out + err
    job_id = out.split()[-1]
    assert wait_for(head.url, job_id, {"RUNNING", "SUCCEEDED", "FAILED"}) == "RUNNING"
    code, out, _ = sora(capsys, "jobs", "stop", job_id, "--address", head.url)
    assert code == 0 and out.strip() == f"job {job_id} STOPPED"
    assert not (root / "datasets/jobdata/LATEST").exists()


def test_local_storage_is_refused_for_a_multi_node_cluster(with_token, corpus, tmp_path, capsys):
    config = write_config(tmp_path / "job.yaml", str(tmp_path / "store"), str(corpus / "*.jsonl"))
    code, out, err = sora(capsys, "submit", config, "--stage", "preprocess", "--address", with_token.url)
    assert code == 2 and out == ""
    assert "is a local directory and the job would run on a 2-node cluster" in err and "--allow-local-storage" in err
    assert len(err.strip().splitlines()) == 1


def test_token_auth_without_and_with_a_wrong_token(ray_head, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    config = write_config(tmp_path / "job.yaml", str(tmp_path / "store"), str(corpus / "*.jsonl"))
    submit = ("submit", config, "--stage", "preprocess", "--address", ray_head.url, "--allow-local-storage")
    code, out, err = sora(capsys, *submit)
    assert code == 2 and out == ""
    assert err.strip() == (
        f"sora submit: error: the Ray cluster at {ray_head.url} requires a token (token authentication is on): "
        "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
    )
    token_file = tmp_path / "token"
    token_file.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    code, _, err = sora(capsys, "jobs", "list", "--address", ray_head.url)
    assert code == 2 and "rejected the token" in err and token_file.read_text() not in err
    token_file.write_text(ray_head.token)  # the right token from a token file works
    code, out, err = sora(capsys, "jobs", "list", "--address", ray_head.url)
    assert code == 0 and out.startswith("job id"), err


@pytest.mark.s3
def test_credentials_reach_the_job_but_never_job_info_or_logs(with_token, corpus, tmp_path, monkeypatch, capsys,
                                                             s3_bucket):  # fmt: skip
    head = with_token
    bucket, settings = s3_bucket
    key_id, secret = f"AKIASORA{secrets.token_hex(6).upper()}", f"sora-secret-{secrets.token_hex(16)}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    config = write_config(tmp_path / "job.yaml", f"s3://{bucket}/root", str(corpus / "*.jsonl"),
                          endpoint_url=settings.endpoint_url)  # fmt: skip
    submit = ("submit", config, "--stage", "preprocess", "--address", head.url, "--follow")
    # The cluster has no credentials of its own: without --pass-credentials the job cannot reach S3.
    code, out, err = sora(capsys, *submit)
    failed = out.splitlines()[0].split()[-1]
    assert code == 1 and "no AWS credentials found" in out
    code, out, err = sora(capsys, *submit, "--pass-credentials")
    assert code == 0, out + err
    passed = out.splitlines()[0].split()[-1]
    import boto3

    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name="us-east-1")
    assert s3.get_object(Bucket=bucket, Key="root/datasets/jobdata/manifests/v000001.json")["ContentLength"] > 0
    shown = ""
    for job_id in (failed, passed):
        for args in (("status", job_id, "--json"), ("status", job_id), ("logs", job_id)):
            code, out, err = sora(capsys, "jobs", *args, "--address", head.url)
            assert code == 0, out + err
            shown += out + err
    shown += sora(capsys, "jobs", "list", "--address", head.url)[1]
    assert '"SORA_JOB_CREDENTIALS": "sora-job/aws-credentials"' in shown  # the file's name, not its content
    logs = "".join(path.read_text(errors="replace") for path in head.log_files())
    for value in (secret, key_id):
        assert value not in shown and value not in logs
