"""Data stage under bad input and real faults: quarantine, error-rate failure, crash before LATEST
moves, two refreshes racing, missing bucket / bad credentials / missing source."""

import json
import os
import subprocess
import sys
import time

import boto3
import pytest
import yaml
from datagen import data_config, make_documents, write_jsonl

from pipeline.cli import main as cli_main
from pipeline.data.quarantine import read_rejects
from pipeline.data.stage import preprocess
from pipeline.data.summary import Reporter
from pipeline.errors import UserError
from pipeline.records import read_latest, read_version
from pipeline.storage import open_store


def run(config):
    return preprocess(config, Reporter(quiet=True))


def write_bad_file(path, good_docs):
    """Good lines interleaved with one of each bad kind."""
    lines = [json.dumps({"text": good_docs[0]}).encode()]
    lines.append(b'{"text": "unterminated')  # malformed JSON
    lines.append(json.dumps({"text": good_docs[1]}).encode())
    lines.append(b'{"text": "caf\xe9 in latin-1, not utf-8 at all"}')  # invalid UTF-8 mid-file
    lines.append(json.dumps({"text": good_docs[2]}).encode())
    lines.append(json.dumps({"text": "   "}).encode())  # empty text
    lines.append(json.dumps({"body": "no text field here"}).encode())  # missing text
    lines.append(json.dumps({"text": "x" * 30000}).encode())  # huge (max_doc_bytes is 20000)
    lines.append(json.dumps({"text": good_docs[3]}).encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


@pytest.mark.usefixtures("ray_local")
def test_every_bad_input_kind_is_quarantined_and_counted(tmp_path):
    docs = make_documents(n=40)
    write_jsonl(tmp_path / "src" / "good.jsonl", docs[4:])
    lines = write_bad_file(tmp_path / "src" / "bad.jsonl", docs)
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "src"), max_error_rate=0.5)
    manifest = run(config)
    stats = manifest.stats.run
    assert stats.rejected == {
        "length/empty": 1,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_text": 1,
        "oversized": 1,
    }
    assert stats.docs_kept == 40  # all good lines survive, including the neighbours of bad ones

    store = open_store(config.storage.root)
    rejects = read_rejects(store, "datasets/test/rejects").to_pylist()
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["invalid_utf8"]["raw"] == lines[3]  # original bytes kept: nothing lost
    assert by_reason["malformed_json"]["raw"] == lines[1]
    assert by_reason["oversized"]["raw"] == lines[7]
    assert all(r["unit"].endswith("bad.jsonl") for r in rejects)


@pytest.mark.usefixtures("ray_local")
def test_error_rate_over_limit_fails_naming_the_file_and_publishes_nothing(tmp_path):
    docs = make_documents(n=10)
    write_jsonl(tmp_path / "src" / "good.jsonl", docs[4:])
    write_bad_file(tmp_path / "src" / "bad.jsonl", docs)
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "src"), max_error_rate=0.1)
    with pytest.raises(UserError, match=r"bad\.jsonl: 3 of 9 records malformed .*Nothing was published"):
        run(config)
    store = open_store(config.storage.root)
    assert read_latest(store, "test") == (None, None)
    assert store.list("datasets/test/manifests") == [] and store.list("datasets/test/shards") == []


def _cli(config_path, env_extra=None, wait=True):
    env = {**os.environ, **(env_extra or {})}
    command = [sys.executable, "-m", "pipeline.cli", "refresh", str(config_path)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


LEASE_SECONDS = 3.0


def _write_config(tmp_path, corpus_dir):
    config = data_config(f"file://{tmp_path}/root", str(corpus_dir), name="crashy", lease_seconds=LEASE_SECONDS)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return config, path


@pytest.mark.e2e
def test_crash_before_latest_moves_leaves_readers_on_previous_version(tmp_path, corpus):
    config, path = _write_config(tmp_path, corpus["dir"])
    code, _, err = _cli(path)
    assert code == 0, err
    store = open_store(config.storage.root)
    v1, _ = read_latest(store, "crashy")

    write_jsonl(corpus["dir"] / "part-9.jsonl", make_documents(seed=9, n=20, prefix="fresh "))
    for point in ("after_shards", "before_latest"):  # a killed process at each point
        code, _, err = _cli(path, {"SORA_FAILPOINTS": point})
        assert code == 75, err
        latest, _ = read_latest(store, "crashy")
        assert latest == v1  # readers still see v1, and v1's shards are intact
        assert read_version(store, "crashy") == v1
        # The killed run could not release its lease: the next run may start once it expires.
        time.sleep(LEASE_SECONDS + 0.5)
    assert store.list("datasets/crashy/manifests")[-1].endswith("v000002.json")  # orphan, never LATEST
    assert store.list("datasets/crashy/tmp")  # a killed build leaves its exchange files behind...
    with pytest.raises(UserError, match="was never published"):
        read_version(store, "crashy", 2)

    code, _, err = _cli(path)  # the next run publishes cleanly
    assert code == 0, err
    latest, _ = read_latest(store, "crashy")
    assert latest.version == 3 and latest.parent_version == 1
    assert latest.stats.run.docs_kept == 20
    assert not store.list("datasets/crashy/tmp")  # ...which the next build deletes, with its own


@pytest.mark.e2e
def test_two_concurrent_refreshes_exactly_one_publishes(tmp_path, corpus):
    config, path = _write_config(tmp_path, corpus["dir"])
    store = open_store(config.storage.root)
    first = _cli(path, wait=False)
    deadline = time.time() + 120
    while not store.exists("datasets/crashy/_lease") and time.time() < deadline:
        time.sleep(0.05)
    code, _, err = _cli(path)
    assert code == 2 and "refresh of dataset 'crashy' already running" in err and "Traceback" not in err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert store.list("datasets/crashy/manifests") == ["datasets/crashy/manifests/v000001.json"]
    assert read_latest(store, "crashy")[0].version == 1


def test_missing_source_is_one_clear_error(tmp_path, capsys):
    config, path = _write_config(tmp_path, tmp_path / "does-not-exist")
    assert cli_main(["preprocess", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "does-not-exist" in err and "Traceback" not in err
    assert not open_store(config.storage.root).list("")


@pytest.mark.s3
def test_missing_bucket_and_bad_credentials_fail_before_work(tmp_path, corpus, s3_endpoint, s3_bucket, deny_bucket):
    from pipeline.storage import StorageSettings

    settings = StorageSettings(endpoint_url=s3_endpoint)
    config = data_config("s3://no-such-bucket/root", str(corpus["dir"]), settings=settings)
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        run(config)

    bucket, _ = s3_bucket
    deny_bucket(bucket, s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    config = data_config(f"s3://{bucket}/root", str(corpus["dir"]), settings=settings)
    with pytest.raises(UserError, match="access denied"):
        run(config)
    client.delete_bucket_policy(Bucket=bucket)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.usefixtures("ray_local")
def test_unreadable_source_file_fails_naming_it_and_publishes_nothing(tmp_path):
    import gzip

    docs = make_documents(n=20)
    write_jsonl(tmp_path / "src" / "good.jsonl", docs)
    whole = gzip.compress(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs))
    (tmp_path / "src" / "broken.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # truncated download
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "src"))
    with pytest.raises(UserError, match=r"broken\.jsonl\.gz: 1 of 1 records malformed .*unreadable"):
        run(config)
    store = open_store(config.storage.root)
    assert read_latest(store, "test") == (None, None) and not store.list("datasets/test/shards")


@pytest.mark.usefixtures("ray_local")
def test_nothing_surviving_is_one_clear_error_and_every_record_is_in_the_rejects(tmp_path):
    write_jsonl(tmp_path / "src" / "short.jsonl", ["tiny", "  ", "no", "tiny"])  # all under min_chars 8
    config = data_config(f"file://{tmp_path}/root", str(tmp_path / "src"), max_error_rate=1.0)
    with pytest.raises(UserError, match=r"no documents survived.*every record is under file://.*rejects/"):
        run(config)
    store = open_store(config.storage.root)
    assert read_latest(store, "test")[0] is None  # nothing published
    rows = read_rejects(store, "datasets/test/rejects").to_pylist()
    assert sorted(r["reason"] for r in rows) == [
        "length/empty",
        "length/too_short",
        "length/too_short",
        "length/too_short",
    ]
