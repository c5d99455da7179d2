"""Checkpoint contract: no COMMITTED or a corrupted file -> not loaded; GC keeps the newest N."""

import json

import pytest

from pipeline.storage import open_store
from pipeline.train import checkpoint as ckpt


def make_checkpoint(store, local, step, commit=True):
    directory = local / f"step{step}"
    (directory / "zero").mkdir(parents=True)
    (directory / "zero" / "rank0.pt").write_bytes(b"weights %d" % step)
    (directory / "mp_rank_00_model_states.pt").write_bytes(b"model %d" % step)
    files = ckpt.upload_directory(store, directory, f"runs/r/checkpoints/{ckpt.tag_for(step)}")
    if commit:
        ckpt.commit(store, "r", step, files, {"step": step, "loader": {"consumed": step * 8}})


def test_uncommitted_and_corrupted_checkpoints_are_skipped(store_root, tmp_path):
    store = open_store(*store_root)
    for step in (2, 4):
        make_checkpoint(store, tmp_path, step)
    make_checkpoint(store, tmp_path, 6, commit=False)  # crashed before COMMITTED
    store.write("runs/r/checkpoints/step-00000004/zero/rank0.pt", b"bit rot")  # corrupted after commit
    with pytest.warns(UserWarning) as warned:
        step, state = ckpt.newest_loadable(store, "r", tmp_path / "download")
    assert step == 2 and state["loader"]["consumed"] == 16
    messages = " | ".join(str(w.message) for w in warned)
    assert "step-00000006 of run r has no COMMITTED marker" in messages
    assert "step-00000004" in messages and "does not match its sha256" in messages
    assert (tmp_path / "download" / "step-00000002" / "zero" / "rank0.pt").read_bytes() == b"weights 2"


def test_missing_file_is_detected(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 3)
    store.delete("runs/r/checkpoints/step-00000003/mp_rank_00_model_states.pt")
    with pytest.warns(UserWarning, match="missing"):
        assert ckpt.newest_loadable(store, "r", tmp_path / "dl") is None


def test_garbage_collection_keeps_newest(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    for step in (1, 2, 3, 4):
        make_checkpoint(store, tmp_path, step)
    assert ckpt.garbage_collect(store, "r", keep_last=2) == [2, 1]
    assert ckpt.committed_steps(store, "r") == [4, 3]
    assert not store.list("runs/r/checkpoints/step-00000001")
    committed = json.loads(store.read("runs/r/checkpoints/step-00000004/COMMITTED"))
    assert {f["name"] for f in committed["files"]} == {
        "zero/rank0.pt",
        "mp_rank_00_model_states.pt",
        "trainer_state.json",
    }
