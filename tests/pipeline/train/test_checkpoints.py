"""Checkpoint contract: COMMITTED last, verified resume, no silent restart, safe names, fenced commits,
GC that never deletes what a resume needs, per-rank downloads."""

import json
import time

import pytest

from pipeline.keys import RunKeys
from pipeline.records import TrainerState
from pipeline.storage import open_store
from pipeline.storage.lease import LeaseHeldError, acquire_lease
from pipeline.train import checkpoint as ckpt
from pipeline.train.spec import LeaseToken

KEYS = RunKeys("r")
# DeepSpeed ZeRO-3 names: one model and one optimizer partition per data-parallel rank.
RANK_FILES = {
    0: {"zero_pp_rank_0_mp_rank_00_model_states.pt": 300, "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 900},
    1: {"zero_pp_rank_1_mp_rank_00_model_states.pt": 300, "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 900},
}
SHARED = {"mp_rank_00_model_states.pt": 50}


def no_fence():
    return None


def trainer_state(step, consumed=0):
    return TrainerState(
        step=step, loader={"consumed": consumed}, dp_size=2, pp=1, world_size=2, dataset="d", dataset_version=1
    )


def make_checkpoint(store, local, step, commit=True, files=None):
    directory = local / f"step{step}"
    directory.mkdir(parents=True)
    for name, size in (files or {**RANK_FILES[0], **RANK_FILES[1], **SHARED}).items():
        (directory / name).write_bytes(bytes([step % 256]) * size)
    uploaded = ckpt.upload_rank_files(store, KEYS, step, directory)
    if commit:
        state = trainer_state(step, step * 8)
        ckpt.commit(store, KEYS, step, uploaded, state, epoch=1, fence=no_fence)


def test_uncommitted_and_damaged_checkpoints_are_skipped(store_root, tmp_path):
    store = open_store(*store_root)
    for step in (2, 4):
        make_checkpoint(store, tmp_path, step)
    make_checkpoint(store, tmp_path, 6, commit=False)  # crashed before COMMITTED
    store.write(KEYS.checkpoint_file(4, "mp_rank_00_model_states.pt"), b"truncated")  # size no longer matches
    step, found = ckpt.find_resume(store, KEYS)
    assert step == 2
    assert found.uncommitted == [6] and set(found.broken) == {4}
    assert "has 9 bytes, COMMITTED lists 50" in found.broken[4]


def test_no_silent_restart_when_no_checkpoint_is_sound(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 3)
    store.delete(KEYS.checkpoint_file(3, "mp_rank_00_model_states.pt"))
    with pytest.raises(ckpt.ResumeError) as error:
        ckpt.find_resume(store, KEYS)
    message = str(error.value)
    assert "step-00000003: file mp_rank_00_model_states.pt listed in COMMITTED is missing" in message
    assert "--restart" in message
    assert ckpt.find_resume(store, KEYS, restart=True)[0] is None  # only when asked explicitly


def test_same_size_corruption_is_caught_while_downloading(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 5)
    name = "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    store.write(KEYS.checkpoint_file(5, name), b"\xff" * 900)  # bit rot: same size, other content
    with pytest.raises(ckpt.ResumeError, match=f"checkpoint step-00000005 of run 'r' is corrupt.*{name}"):
        ckpt.download_for_rank(store, KEYS, 5, tmp_path / "node", dp_rank=0, everything=False)
    assert not (tmp_path / "node" / "step-00000005" / name).exists()


@pytest.mark.parametrize("name", ["../../escape.pt", "/etc/passwd", "a/../../b", "", "x\\..\\y"])
def test_unsafe_names_in_committed_are_rejected(tmp_path, name):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 7)
    marker = json.loads(store.read(KEYS.checkpoint_file(7, ckpt.COMMITTED)))
    marker["files"].append({"name": name, "size": 1, "sha256": "0" * 64})
    store.write(KEYS.checkpoint_file(7, ckpt.COMMITTED), json.dumps(marker).encode())
    found = ckpt.inventory(store, KEYS)
    assert found.sound == [] and "unsafe file name" in found.broken[7]
    with pytest.raises(ValueError, match="unsafe file name"):
        ckpt.download_for_rank(store, KEYS, 7, tmp_path / "node", dp_rank=0, everything=True)
    assert not any(p.name in ("escape.pt", "passwd") for p in tmp_path.parent.rglob("*"))


def test_each_rank_downloads_its_partition_and_shared_files_once_per_node(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 8)
    node = tmp_path / "node"
    state_bytes = len(store.read(KEYS.checkpoint_file(8, ckpt.STATE)))
    first = ckpt.download_for_rank(store, KEYS, 8, node, dp_rank=0, everything=False)
    second = ckpt.download_for_rank(store, KEYS, 8, node, dp_rank=1, everything=False)
    assert first == sum(RANK_FILES[0].values()) + sum(SHARED.values()) + state_bytes
    assert second == sum(RANK_FILES[1].values())  # shared files already on this node
    everything = sum(RANK_FILES[0].values()) + sum(RANK_FILES[1].values()) + sum(SHARED.values()) + state_bytes
    assert first + second == everything  # before: every rank downloaded all of it (2 x everything)
    other_node = ckpt.download_for_rank(store, KEYS, 8, tmp_path / "node2", dp_rank=1, everything=False)
    assert other_node == sum(RANK_FILES[1].values()) + sum(SHARED.values()) + state_bytes


def test_gc_keeps_newest_and_removes_leftovers_of_killed_saves(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    for step in (1, 2, 3):
        make_checkpoint(store, tmp_path, step)
    make_checkpoint(store, tmp_path, 4, commit=False)  # killed save
    make_checkpoint(store, tmp_path, 5)
    assert ckpt.garbage_collect(store, KEYS, keep_last=2, newest=5, fence=no_fence) == [4, 2, 1]
    assert ckpt.inventory(store, KEYS).sound == [5, 3]
    assert not store.list(KEYS.checkpoint(4)) and not store.list(KEYS.checkpoint(1))


def test_gc_never_counts_broken_checkpoints_against_the_new_ones(tmp_path):
    """After an explicit restart, stale unusable checkpoints must not push new ones out."""
    store = open_store(f"file://{tmp_path}/store")
    for step in (10, 12):
        make_checkpoint(store, tmp_path, step)
        store.delete(KEYS.checkpoint_file(step, "mp_rank_00_model_states.pt"))  # unusable
    make_checkpoint(store, tmp_path, 2)  # the restarted run's first checkpoint
    deleted = ckpt.garbage_collect(store, KEYS, keep_last=1, newest=2, fence=no_fence)
    assert deleted == [] and ckpt.inventory(store, KEYS).sound == [2]


def test_commit_and_gc_are_fenced_by_the_run_lease(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 1)
    lease = acquire_lease(store, KEYS.lease, 0.5, owner="old-driver")
    old = LeaseToken(lease.owner, lease.epoch)
    old.assert_held(store, KEYS)
    time.sleep(0.6)  # the old holder stalls past its lease; another driver takes the run
    acquire_lease(store, KEYS.lease, 60, owner="new-driver")
    directory = tmp_path / "late"
    directory.mkdir()
    (directory / "mp_rank_00_model_states.pt").write_bytes(b"late")
    files = ckpt.upload_rank_files(store, KEYS, 2, directory)
    with pytest.raises(LeaseHeldError, match="lease lost to new-driver"):
        ckpt.commit(store, KEYS, 2, files, trainer_state(2), old.epoch, lambda: old.assert_held(store, KEYS))
    assert not store.exists(KEYS.checkpoint_file(2, ckpt.COMMITTED))
    with pytest.raises(LeaseHeldError):
        ckpt.garbage_collect(store, KEYS, keep_last=1, newest=2, fence=lambda: old.assert_held(store, KEYS))
    assert ckpt.inventory(store, KEYS).sound == [1]  # nothing deleted by the fenced-off writer


def test_resume_with_changed_settings_names_them():
    saved = {"model.hidden_size": 64, "strategy": "zero3", "zero_stage": 3, "offload": False, "bf16": False}
    current = dict(saved, strategy="zero1", zero_stage=1)
    with pytest.raises(ckpt.ResumeError, match="strategy: 'zero3' -> 'zero1'; zero_stage: 3 -> 1"):
        ckpt.check_compatible(saved, current)
    ckpt.check_compatible(saved, dict(saved))  # same settings (any worker count) resume
