"""Stored documents are typed records: only `pipeline/records/` parses or serializes them.

An AST scan over `pipeline/` (the storage layer below records is exempt: its lease object is its
own format) finds the shapes that hand-parsed documents had: `json.loads` of what a store read
returned, `json.dumps` into a store write, and documents indexed by string key
(`manifest["..."]`, `pinned.get("...")`). Then round trips of the records themselves.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.records import (
    Committed,
    ExportInfo,
    LatestPointer,
    Manifest,
    MetricsRow,
    RunPin,
    StageTiming,
    TrainerState,
    WarmStartLineage,
)

ROOT = Path(__file__).resolve().parents[2]
EXEMPT = ("pipeline/records/", "pipeline/storage/")
# Names under which stored documents travelled as dicts before they were records.
DOCUMENT_NAMES = {"manifest", "parent", "pin", "pinned", "marker", "index", "suites", "document", "export_info"}
READS = {"read", "read_with_etag"}
WRITES = {"write", "create", "swap"}


def _calls(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call)]


def _method(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _is_json(call: ast.Call, name: str) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == name and getattr(func.value, "id", None) == "json"


def _read_result(node: ast.AST) -> bool:
    """`store.read(...)`, or `found[0]` of `found = store.read_with_etag(...)`."""
    if any(_method(c) in READS for c in _calls(node)):
        return True
    return isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_json(node, "loads") and node.args and _read_result(node.args[0]):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: json.loads of a stored document")
        if isinstance(node, ast.Call) and _method(node) in WRITES:
            if any(_is_json(c, "dumps") for arg in node.args for c in _calls(arg)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: json.dumps into a store write")
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in DOCUMENT_NAMES
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}[{node.slice.value!r}]")
        if (
            isinstance(node, ast.Call)
            and _method(node) == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in DOCUMENT_NAMES
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.value.id}.get(...)")
    return found


def test_only_records_parse_stored_documents():
    paths = [p for p in sorted((ROOT / "pipeline").rglob("*.py")) if not str(p.relative_to(ROOT)).startswith(EXEMPT)]
    found = [line for path in paths for line in violations(path)]
    assert found == [], "parse stored documents through pipeline.records:\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "pipeline" / "sample.py"
    sample.parent.mkdir()
    sample.write_text(
        "import json\n"
        "m = json.loads(store.read(key))\n"
        "p = json.loads(found[0])\n"
        "store.write(key, json.dumps({}).encode())\n"
        "v = manifest['version']\n"
        "w = pinned.get('init_from')\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert len(violations(sample)) == 5
    finally:
        ROOT = saved


def _manifest() -> Manifest:
    tokenizer = {"uri": "u", "key": "k", "sha256": "0" * 64, "vocab_size": 300, "eos_id": 0, "pad_id": 1}
    shard = {"uri": "u", "key": "k", "rows": 2, "tokens": 10, "bytes": 64, "sha256": "1" * 64, "docs": 3}
    return Manifest.from_dict(
        {
            "dataset": "d",
            "version": 2,
            "parent_version": 1,
            "seq_len": 8,
            "dtype": "uint16",
            "tokenizer": tokenizer,
            "shards": {"train": [shard], "val": []},
            "a_field_from_a_newer_writer": {"kept": True},
        }
    )


def test_records_round_trip_and_keep_what_newer_writers_add():
    manifest = _manifest()
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest and again.to_dict()["a_field_from_a_newer_writer"] == {"kept": True}
    assert manifest.split("train")[0].docs == 3 and manifest.split("heldout") == ()
    assert manifest.block_len == 9 and manifest.key == "datasets/d/manifests/v000002.json"
    lineage = WarmStartLineage(run="p", step=4, dataset="d", dataset_version=1, checkpoint="file:///c")
    pin = RunPin(dataset="d", dataset_version=2)
    assert RunPin.from_bytes(pin.with_lineage(lineage).to_bytes()).init_from == lineage
    assert "init_from" not in pin.with_lineage(lineage).with_lineage(None).to_dict()
    state = TrainerState(step=5, loader={"position": 40}, dp_size=2, pp=1, world_size=2, dataset="d", dataset_version=2)
    assert TrainerState.from_bytes(state.to_bytes()).layout == (2, 1)
    info = ExportInfo(step=200, dataset="d", dataset_version=2, run="r")
    assert info.finished(200) and not info.finished(201) and "warm_start" not in info.to_dict()
    assert MetricsRow.from_dict({"step": 1, "data_wait_s": 0.5, "compute_s": 1.0}).step_s == 1.5
    assert StageTiming.from_bytes(b'{"stage": "data", "started": 1, "finished": 3, "wall_s": 2}').wall_s == 2
    assert LatestPointer(version=2, manifest=manifest.key).to_bytes() == (
        b'{"version": 2, "manifest": "datasets/d/manifests/v000002.json"}'
    )


@pytest.mark.parametrize(
    "record, body, message",
    [
        (Manifest, b'{"dataset": "d", "version": 1}', r"malformed Manifest \(seq_len: Field required"),
        (Manifest, b"not json", r"malformed Manifest"),
        (Committed, b'{"step": 1, "files": [{"name": "../x", "size": 1, "sha256": "a"}]}', r"unsafe file name"),
    ],
)
def test_a_malformed_document_is_one_clear_error(record, body, message):
    with pytest.raises(ValueError, match=message):
        record.from_bytes(body)
