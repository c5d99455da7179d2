"""The read side at scale: compressed jsonl, parquet and HF datasets read as streams and handed out
in bounded blocks (a file larger than the memory budget reads in a process that stays under it),
the same records as an uncompressed read, a truncated archive quarantined as one record naming the
file, and sources listed without a request per file."""

import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard
from datagen import make_documents

import pipeline
from pipeline.config.data import DataConfig, SourceConfig
from pipeline.data.exchange import Scratch
from pipeline.data.plan import PieceMeta, read_piece
from pipeline.data.quarantine import check_error_rates
from pipeline.data.read_stage import read_records, read_task_options
from pipeline.data.sources import UnitPart, list_all_units, list_units
from pipeline.errors import UserError
from pipeline.storage import StorageSettings

MIB = 1 << 20
REPO = Path(pipeline.__file__).resolve().parents[1]
SMALL_BLOCK = 1 << 16  # the smallest `read_block_bytes`: a few hundred KB of input is many blocks


def _compress(codec: str, data: bytes) -> bytes:
    return gzip.compress(data) if codec == "gz" else zstandard.ZstdCompressor().compress(data)


def _lines_with_bad_input(docs: list[str]) -> bytes:
    lines = [json.dumps({"text": d, "lab": i % 3}).encode() for i, d in enumerate(docs)]
    lines[3] = b'{"text": "unterminated'
    lines[7] = b"\xff\xfe not utf-8"
    lines[11] = b""  # a blank line: skipped, but counted by the line numbers
    lines[19] = json.dumps({"body": "no text"}).encode()
    lines[23] = json.dumps({"text": "x" * 30000}).encode()  # over max_doc_bytes
    return b"\n".join(lines) + b"\n\n" + json.dumps({"text": "the last line has no newline"}).encode()


def _config(sources: list[dict], **overrides) -> DataConfig:
    return DataConfig.model_validate(
        {"sources": sources, "filters": {"max_doc_bytes": 20000, "min_chars": 8}, **overrides}
    )


def _read(config: DataConfig, blocks: int = 1):
    """(all records sorted by order, the blocks, stats, units), checking the router on every block."""
    settings = StorageSettings()
    units = list_all_units(config.sources, settings)
    scratch = Scratch(f"file://{tempfile.mkdtemp(prefix='sora-read-')}", settings, "tmp")
    records, stats = read_records(units, config, settings, blocks, scratch)
    tables = records.tables()
    for index, table in enumerate(tables):
        assert (records.router(table["order"].to_numpy()) == index).all()
    table = pa.concat_tables(tables).sort_by("order")
    assert len(set(table["doc_key"].to_pylist())) == table.num_rows  # every record has its own key
    return table, tables, stats, units


def _of_file(table: pa.Table, name: str) -> tuple[pa.Table, list[str]]:
    """One file's records without what names the file, and their line numbers."""
    rows = table.filter(pc.match_substring(table["doc_key"], f"/{name}|"))
    lines = [key.rsplit("|", 1)[1] for key in rows["doc_key"].to_pylist()]
    return rows.drop_columns(["doc_key", "order", "unit_index"]), lines


# -- bounded memory ------------------------------------------------------------------------------
_MEASURE = r"""
import json, resource, sys
from pathlib import Path

from pipeline.config.data import DataConfig
from pipeline.data.plan import read_piece
from pipeline.data.sources import UnitPart, list_units
from pipeline.storage import StorageSettings

warm, big, block = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def read(path):
    config = DataConfig.model_validate(
        {"sources": [{"kind": "jsonl", "uri": str(path)}], "read_block_bytes": block, "dedup": {"near": False}}
    )
    (unit,) = list_units(config.sources[0], 0, StorageSettings())
    rows = blocks = largest = 0
    for out in read_piece([UnitPart(unit, 0, 0)], config, StorageSettings()):
        if hasattr(out, "num_rows"):
            rows, blocks, largest = rows + out.num_rows, blocks + 1, max(largest, out.num_rows)
        del out  # a consumer (Ray) lets each block go before the next
    return rows, blocks, largest


def peak():
    # This process's own high-water mark: ru_maxrss would start at the forking parent's (Linux keeps
    # the pre-exec peak), i.e. pytest's.
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


read(warm)  # imports and codecs loaded outside the measurement (a few lines: no block-sized buffers yet)
before = peak()
rows, blocks, largest = read(big)
print(json.dumps({"rows": rows, "blocks": blocks, "largest": largest, "growth": peak() - before, "before": before}))
"""


def _write_repeated(path: Path, codec: str, target: int) -> tuple[int, int]:
    """A highly compressible jsonl file of at least `target` decompressed bytes, written as a stream
    (never whole in memory); returns (lines, decompressed bytes)."""
    body = "lorem ipsum dolor sit amet consectetur " * 200  # ~8 KB documents
    size = lines = 0
    with open(path, "wb") as raw:
        out = zstandard.ZstdCompressor(level=1).stream_writer(raw) if codec == "zst" else gzip.open(raw, "wb", 1)
        with out:
            while size < target:
                line = json.dumps({"text": f"document {lines}: {body}"}).encode() + b"\n"
                out.write(line)
                size, lines = size + len(line), lines + 1
    return lines, size


@pytest.mark.parametrize(
    "codec, decompressed, budget, block",
    [("zst", 210 * MIB, 40 * MIB, 2 * MIB), ("gz", 100 * MIB, 20 * MIB, 1 * MIB)],
)
def test_compressed_file_larger_than_the_memory_budget_reads_in_bounded_blocks(
    tmp_path, codec, decompressed, budget, block
):
    warm, big = tmp_path / f"warm.jsonl.{codec}", tmp_path / f"big.jsonl.{codec}"
    _write_repeated(warm, codec, 1)  # one line
    lines, size = _write_repeated(big, codec, decompressed)
    assert size >= 5 * budget and big.stat().st_size < size / 20  # the file is larger than the budget only unpacked
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(warm), str(big), str(block)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    growth, before = measured["growth"] / MIB, measured["before"] / MIB
    print(f"{codec}: {size / MIB:.0f} MiB decompressed, peak RSS {before:.0f} -> {before + growth:.0f} MiB")
    assert measured["rows"] == lines  # every line read
    assert measured["blocks"] >= size // (2 * block)  # handed out block by block...
    assert measured["growth"] < budget  # ...never holding the file, decompressed or as records


# -- same records --------------------------------------------------------------------------------
@pytest.mark.usefixtures("ray_local")
def test_compressed_files_read_the_same_records_and_lines_as_uncompressed(tmp_path):
    body = _lines_with_bad_input(make_documents(n=400))
    half = body.index(b"\n", len(body) // 2) + 1
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.jsonl").write_bytes(body)
    (source / "a.jsonl.gz").write_bytes(_compress("gz", body))
    # Two zstd frames (as pzstd or a concatenating writer produce): both are read.
    (source / "a.jsonl.zst").write_bytes(_compress("zst", body[:half]) + _compress("zst", body[half:]))
    sources = [{"kind": "jsonl", "uri": str(source), "label_field": "lab"}]

    table, tables, stats, units = _read(_config(sources, read_block_bytes=SMALL_BLOCK))
    assert len(tables) >= 3 * len(body) // SMALL_BLOCK  # several blocks per file, compressed or not
    plain, plain_lines = _of_file(table, "a.jsonl")
    assert plain.num_rows == 400 and plain_lines[-1] == f"{401:010d}"  # blank lines are counted
    for name in ("a.jsonl.gz", "a.jsonl.zst"):
        records, lines = _of_file(table, name)
        assert lines == plain_lines and records.equals(plain)  # texts, rejects, raw bytes, hashes...
    by_unit = {units[i].key: counts for i, counts in stats.units.items()}
    assert by_unit["a.jsonl.gz"] == by_unit["a.jsonl.zst"] == by_unit["a.jsonl"]
    assert by_unit["a.jsonl"].reasons == {"malformed_json": 1, "invalid_utf8": 1, "missing_text": 1, "oversized": 1}

    whole, _, _, _ = _read(_config(sources))  # one block per read task: the same records
    assert whole.equals(table)


@pytest.mark.usefixtures("ray_local")
def test_parquet_and_hf_datasets_are_read_in_blocks_with_the_same_records(tmp_path):
    import datasets

    docs = make_documents(n=300)
    texts = [None if i % 50 == 7 else d for i, d in enumerate(docs)]  # rows without text are rejected
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": texts, "n": list(range(300))}), tmp_path / "pq" / "d.parquet", row_group_size=40)
    datasets.Dataset.from_dict({"text": docs, "n": list(range(300))}).save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "hub").mkdir()  # a hub dataset, here a local directory (tests run offline)
    (tmp_path / "hub" / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    sources = [
        {"kind": "parquet", "uri": str(tmp_path / "pq")},
        {"kind": "hf_disk", "uri": str(tmp_path / "disk")},
        {"kind": "hf_hub", "uri": str(tmp_path / "hub")},
    ]
    table, tables, stats, _ = _read(_config(sources, read_block_bytes=SMALL_BLOCK))
    assert len(tables) >= 3 * 4  # ~200 KB of text per source
    whole, whole_tables, whole_stats, _ = _read(_config(sources))
    assert len(whole_tables) < len(tables) and whole.equals(table) and whole_stats == stats
    assert stats.docs_read == 900 and stats.rejected == {"missing_text": 6}
    for source in range(3):
        rows = table.filter(pc.equal(table["source_index"], source))
        lines = [int(k.rsplit("|", 1)[1]) for k in rows["doc_key"].to_pylist()]
        assert lines == list(range(300))  # a row's line is its position in the file / dataset
        live = rows.filter(pc.is_null(rows["reject"]))
        assert live["text"].to_pylist() == ([t for t in texts if t] if source == 0 else docs)

    split, _, _, _ = _read(_config(sources, read_block_bytes=SMALL_BLOCK), blocks=4)  # row groups in 4 tasks
    assert split.equals(table)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_truncated_archive_is_one_unreadable_record_naming_the_file(tmp_path, codec):
    docs = make_documents(n=600)
    source = tmp_path / "src"
    source.mkdir()
    (source / "good.jsonl").write_bytes(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs[:50]))
    whole = _compress(codec, b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs))
    (source / f"big.jsonl.{codec}").write_bytes(whole[: len(whole) * 3 // 4])  # blocks went out before the cut
    small = _compress(codec, b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs[:20]))
    (source / f"small.jsonl.{codec}").write_bytes(small[: len(small) // 2])  # cut within the first block
    config = _config([{"kind": "jsonl", "uri": str(source)}], read_block_bytes=SMALL_BLOCK)

    settings = StorageSettings()
    units = list_all_units(config.sources, settings)
    big = next(i for i, u in enumerate(units) if u.key.startswith("big"))
    *blocks, meta = read_piece([UnitPart(units[big], big, 0)], config, settings)
    assert isinstance(meta, PieceMeta) and len(blocks) > 2
    assert len(meta.dropped) == 1  # records already handed out, which the driver removes

    table, _, stats, units = _read(config)
    for name in (f"big.jsonl.{codec}", f"small.jsonl.{codec}"):
        index = next(i for i, u in enumerate(units) if u.key == name)
        counts = stats.units[index]
        assert (counts.records, counts.malformed, counts.reasons) == (1, 1, {"unreadable": 1})
        records, _ = _of_file(table, name)
        assert records["reject"].to_pylist() == ["unreadable"] and records["text"].to_pylist() == [None]
        assert b"Truncated" in records["raw"][0].as_py()  # the error, for whoever reads the rejects
    assert _of_file(table, "small.jsonl." + codec)[1] == [f"{0:010d}"]  # as a file unreadable as a whole
    assert _of_file(table, "good.jsonl")[0].num_rows == 50
    assert stats.docs_read == 52
    with pytest.raises(UserError, match=rf"big\.jsonl\.{codec}.*: 1 of 1 records malformed .*unreadable"):
        check_error_rates(stats.units, units, 0.5, set())


def test_read_tasks_ask_for_memory_and_keep_the_stage_placement(monkeypatch):
    from pipeline.data import placement

    monkeypatch.setattr(placement, "task_options", lambda: {"resources": {"sora_data": 0.001}})
    options = read_task_options(DataConfig(task_memory="2GiB"))
    assert options == {"resources": {"sora_data": 0.001}, "memory": 2 << 30}
    assert DataConfig().task_memory == 1 << 30 and DataConfig().read_block_bytes == 64 << 20


# -- listing ---------------------------------------------------------------------------------------
def test_local_listing_carries_sizes_and_mtimes(tmp_path):
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "sub/b.jsonl.gz", "c.txt", "d-2.jsonl"):
        (source / name).write_bytes(b"x" * len(name))
    settings = StorageSettings()
    units = list_units(SourceConfig(kind="jsonl", uri=str(source)), 0, settings)
    assert [u.key for u in units] == ["a.jsonl", "d-2.jsonl", "sub/b.jsonl.gz"]
    for unit in units:
        stat = (source / unit.key).stat()
        assert (unit.size, unit.version, unit.root) == (stat.st_size, str(stat.st_mtime_ns), f"file://{source}")
    (single,) = list_units(SourceConfig(kind="jsonl", uri=str(source / "sub" / "b.jsonl.gz")), 0, settings)
    assert (single.root, single.key, single.size) == (f"file://{source}/sub", "b.jsonl.gz", 14)
    globbed = list_units(SourceConfig(kind="jsonl", uri=f"{source}/d-*.jsonl"), 0, settings)
    assert [u.key for u in globbed] == ["d-2.jsonl"]


@pytest.fixture
def s3_requests(monkeypatch):
    """The requests the in-process S3 server (moto) receives: (method, URL), in order."""
    from moto.moto_api import recorder

    seen: list[tuple[str, str]] = []

    def record(request, body=None):
        seen.append((request.method, request.raw_url))

    monkeypatch.setattr(recorder, "_record_request", record)
    return seen


@pytest.mark.s3
def test_s3_listing_is_one_request_per_thousand_files_and_no_head(s3_bucket, s3_endpoint, s3_requests):
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    bucket, settings = s3_bucket
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    n = 2001
    # Straight into the in-process server's store: 2000 PUTs over HTTP would take ~10 s on 2 cores.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i in range(n):
        backend.put_object(bucket, f"corpus/part-{i:05d}.jsonl", b"{}\n" * (i % 7 + 1))
    client.put_object(Bucket=bucket, Key="corpus/README.md", Body=b"not a jsonl file")
    client.put_object(Bucket=bucket, Key="corpus-old/part-00000.jsonl", Body=b"{}\n")  # a sibling prefix
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    etags = {o["Key"]: o["ETag"] for page in pages for o in page["Contents"]}

    s3_requests.clear()
    units = list_units(SourceConfig(kind="jsonl", uri=f"s3://{bucket}/corpus"), 0, settings)
    assert [u.key for u in units] == [f"part-{i:05d}.jsonl" for i in range(n)]
    assert all(u.size == 3 * (i % 7 + 1) and u.version == etags[f"corpus/{u.key}"] for i, u in enumerate(units))
    methods = [method for method, _ in s3_requests]
    assert methods == ["GET"] * math.ceil((n + 1) / 1000)  # list calls only: no HEAD, no GET of a file
    assert all("list-type=2" in url for _, url in s3_requests)

    s3_requests.clear()
    (single,) = list_units(SourceConfig(kind="jsonl", uri=f"s3://{bucket}/corpus/part-00007.jsonl"), 0, settings)
    assert (single.root, single.key, single.size) == (f"s3://{bucket}/corpus", "part-00007.jsonl", 3)
    assert [m for m, _ in s3_requests] == ["GET", "GET"]  # nothing under it, then the file itself: listings

    globbed = list_units(SourceConfig(kind="jsonl", uri=f"s3://{bucket}/corpus/part-0001*.jsonl"), 0, settings)
    assert [u.key for u in globbed] == [f"part-{i:05d}.jsonl" for i in range(10, 20)]
    assert "HEAD" not in {m for m, _ in s3_requests}
    with pytest.raises(UserError, match="not found"):
        list_units(SourceConfig(kind="jsonl", uri=f"s3://{bucket}/nothing-here"), 0, settings)
    with pytest.raises(UserError, match="bucket 'sora-no-such-bucket' does not exist"):
        list_units(SourceConfig(kind="jsonl", uri="s3://sora-no-such-bucket/corpus"), 0, settings)


@pytest.mark.s3
def test_compressed_files_on_s3_are_streamed_in_blocks(s3_bucket, s3_endpoint):
    import boto3

    bucket, settings = s3_bucket
    body = _lines_with_bad_input(make_documents(n=300))
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name, data in (
        ("a.jsonl", body),
        ("a.jsonl.gz", _compress("gz", body)),
        ("a.jsonl.zst", _compress("zst", body)),
    ):
        client.put_object(Bucket=bucket, Key=f"src/{name}", Body=data)
    config = _config([{"kind": "jsonl", "uri": f"s3://{bucket}/src"}], read_block_bytes=SMALL_BLOCK)
    read = {}
    for index, unit in enumerate(list_units(config.sources[0], 0, settings)):
        *blocks, meta = read_piece([UnitPart(unit, index, 0)], config, settings)
        assert len(blocks) >= len(body) // SMALL_BLOCK and not meta.dropped
        read[unit.key] = pa.concat_tables(blocks).drop_columns(["unit_index"])
    assert read["a.jsonl.gz"].equals(read["a.jsonl"]) and read["a.jsonl.zst"].equals(read["a.jsonl"])
    assert read["a.jsonl"].num_rows == 300
