"""Checkpoint contract: COMMITTED last, verified resume, no silent restart, safe names, fenced commits,
GC that never deletes what a resume needs, per-rank downloads."""

import json
import logging
import time
from pathlib import Path

import pytest

from pipeline.keys import CheckpointId as C
from pipeline.keys import RunKeys
from pipeline.records import TrainerState
from pipeline.storage import open_store
from pipeline.storage.lease import LeaseHeldError, acquire_lease
from pipeline.train import checkpoint as ckpt
from pipeline.train import checkpoint_download as fetch
from pipeline.train import checkpoint_manager
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


def make_checkpoint(store, local, step, commit=True, files=None, epoch=None, fill=None):
    """A checkpoint at `step`: in the layout without epoch (as written before epochs were in the
    key) unless `epoch` is given."""
    checkpoint = C(step, epoch)
    directory = local / checkpoint.tag
    directory.mkdir(parents=True)
    for name, size in (files or {**RANK_FILES[0], **RANK_FILES[1], **SHARED}).items():
        (directory / name).write_bytes(bytes([step % 256 if fill is None else fill]) * size)
    uploaded = ckpt.upload_rank_files(store, KEYS, checkpoint, directory)
    if commit:
        state = trainer_state(step, step * 8)
        ckpt.commit(store, KEYS, checkpoint, uploaded, state, epoch=epoch or 1, fence=no_fence)
    return checkpoint


def corrupt(store, checkpoint, name):
    """Bit rot: other bytes, same size (the listing still looks sound)."""
    key = KEYS.checkpoint_file(checkpoint, name)
    store.write(key, b"\xee" * store.size(key))


def test_uncommitted_and_damaged_checkpoints_are_skipped(store_root, tmp_path):
    store = open_store(*store_root)
    for step in (2, 4):
        make_checkpoint(store, tmp_path, step)
    make_checkpoint(store, tmp_path, 6, commit=False)  # crashed before COMMITTED
    store.write(KEYS.checkpoint_file(4, "mp_rank_00_model_states.pt"), b"truncated")  # size no longer matches
    step, found = ckpt.find_resume(store, KEYS)
    assert step == C(2)
    assert found.uncommitted == [C(6)] and set(found.broken) == {C(4)}
    assert "has 9 bytes, COMMITTED lists 50" in found.broken[C(4)]


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
        fetch.download_for_rank(store, KEYS, 5, tmp_path / "node", dp_rank=0, everything=False)
    assert not (tmp_path / "node" / "step-00000005" / name).exists()


@pytest.mark.parametrize("name", ["../../escape.pt", "/etc/passwd", "a/../../b", "", "x\\..\\y"])
def test_unsafe_names_in_committed_are_rejected(tmp_path, name):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 7)
    marker = json.loads(store.read(KEYS.checkpoint_file(7, ckpt.COMMITTED)))
    marker["files"].append({"name": name, "size": 1, "sha256": "0" * 64})
    store.write(KEYS.checkpoint_file(7, ckpt.COMMITTED), json.dumps(marker).encode())
    found = ckpt.inventory(store, KEYS)
    assert found.sound == [] and "unsafe file name" in found.broken[C(7)]
    with pytest.raises(ValueError, match="unsafe file name"):
        fetch.download_for_rank(store, KEYS, 7, tmp_path / "node", dp_rank=0, everything=True)
    assert not any(p.name in ("escape.pt", "passwd") for p in tmp_path.parent.rglob("*"))


def test_each_rank_downloads_its_partition_and_shared_files_once_per_node(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 8)
    node = tmp_path / "node"
    state_bytes = len(store.read(KEYS.checkpoint_file(8, ckpt.STATE)))
    first = fetch.download_for_rank(store, KEYS, 8, node, dp_rank=0, everything=False)
    second = fetch.download_for_rank(store, KEYS, 8, node, dp_rank=1, everything=False)
    assert first == sum(RANK_FILES[0].values()) + sum(SHARED.values()) + state_bytes
    assert second == sum(RANK_FILES[1].values())  # shared files already on this node
    everything = sum(RANK_FILES[0].values()) + sum(RANK_FILES[1].values()) + sum(SHARED.values()) + state_bytes
    assert first + second == everything  # before: every rank downloaded all of it (2 x everything)
    other_node = fetch.download_for_rank(store, KEYS, 8, tmp_path / "node2", dp_rank=1, everything=False)
    assert other_node == sum(RANK_FILES[1].values()) + sum(SHARED.values()) + state_bytes


def test_gc_keeps_newest_and_removes_leftovers_of_killed_saves(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    for step in (1, 2, 3):
        make_checkpoint(store, tmp_path, step)
    make_checkpoint(store, tmp_path, 4, commit=False)  # killed save
    make_checkpoint(store, tmp_path, 5)
    assert ckpt.garbage_collect(store, KEYS, keep_last=2, newest=5, fence=no_fence) == [C(4), C(2), C(1)]
    assert ckpt.inventory(store, KEYS).sound == [C(5), C(3)]
    assert not store.list(KEYS.checkpoint(4)) and not store.list(KEYS.checkpoint(1))


def test_gc_never_counts_broken_checkpoints_against_the_new_ones(tmp_path):
    """After an explicit restart, stale unusable checkpoints must not push new ones out."""
    store = open_store(f"file://{tmp_path}/store")
    for step in (10, 12):
        make_checkpoint(store, tmp_path, step)
        store.delete(KEYS.checkpoint_file(step, "mp_rank_00_model_states.pt"))  # unusable
    make_checkpoint(store, tmp_path, 2)  # the restarted run's first checkpoint
    deleted = ckpt.garbage_collect(store, KEYS, keep_last=1, newest=2, fence=no_fence)
    assert deleted == [] and ckpt.inventory(store, KEYS).sound == [C(2)]


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
    assert ckpt.inventory(store, KEYS).sound == [C(1)]  # nothing deleted by the fenced-off writer


def test_resume_with_changed_settings_names_them():
    saved = {"model.hidden_size": 64, "strategy": "zero3", "zero_stage": 3, "offload": False, "bf16": False}
    current = dict(saved, strategy="zero1", zero_stage=1)
    with pytest.raises(ckpt.ResumeError, match="strategy: 'zero3' -> 'zero1'; zero_stage: 3 -> 1"):
        ckpt.check_compatible(saved, current)
    ckpt.check_compatible(saved, dict(saved))  # same settings (any worker count) resume


# -- issue 17 item 6: verified fallback, epochs in the key, warm-start pins ------------------------
def test_keys_name_the_lease_epoch_and_still_read_the_old_layout():
    assert KEYS.checkpoint(C(100, 3)) == "runs/r/checkpoints/step-00000100-e0003"
    assert KEYS.checkpoint(100) == KEYS.checkpoint(C(100)) == "runs/r/checkpoints/step-00000100"
    assert C.parse("step-00000100-e0003") == C(100, 3) and C.parse("step-00000100") == C(100)
    assert C.parse("step-00000100.tmp") is None and C.parse("latest") is None
    assert sorted([C(100, 3), C(100), C(99, 7), C(100, 2)], key=lambda c: c.order)[-1] == C(100, 3)
    assert KEYS.warm_start_pin("child") == "runs/r/pins/child.json"


def test_corrupt_newest_checkpoint_is_skipped_for_the_next_older_that_verifies(tmp_path, caplog):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 2)  # written before epochs were in the key: still resumable
    newer = make_checkpoint(store, tmp_path, 4, epoch=3)
    corrupt(store, newer, "mp_rank_00_model_states.pt")
    assert ckpt.find_resume(store, KEYS)[0] == newer  # the listing alone cannot tell
    step, found = ckpt.find_resume(store, KEYS, verify=True)
    assert step == C(2)
    assert len(found.skipped) == 1
    with caplog.at_level(logging.WARNING):  # the workers' rank 0 says which it skipped and why
        point = checkpoint_manager._find(store, KEYS, False, None, {})
    assert point.checkpoint == C(2) and point.skipped == tuple(found.skipped)
    assert "skipping checkpoint step-00000004-e0003: file mp_rank_00_model_states.pt sha256 mismatch" in caplog.text
    assert found.skipped[0].startswith("step-00000004-e0003: file mp_rank_00_model_states.pt sha256 mismatch")
    # Trainer state too; when nothing verifies, the existing error (listing what was found).
    corrupt(store, C(2), ckpt.STATE)
    with pytest.raises(ckpt.ResumeError, match=r"none can be resumed from: step-00000002: file trainer_state.json sha"):
        ckpt.find_resume(store, KEYS, verify=True)
    assert ckpt.find_resume(store, KEYS, verify=True, restart=True)[0] is None


def test_stale_writer_of_the_same_step_never_replaces_the_committed_files(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    lease = acquire_lease(store, KEYS.lease, 0.5, owner="old-driver")
    old = LeaseToken(lease.owner, lease.epoch)
    time.sleep(0.6)  # the old holder stalls past its lease; another driver takes the run
    lease = acquire_lease(store, KEYS.lease, 60, owner="new-driver")
    new = LeaseToken(lease.owner, lease.epoch)
    assert new.epoch > old.epoch
    committed = make_checkpoint(store, tmp_path / "new", 6, epoch=new.epoch)  # the holder commits step 6
    listing = store.read(KEYS.checkpoint_file(committed, ckpt.COMMITTED))

    # The stale writer wakes up and saves step 6 too (other content): its files go to its own folder.
    late = tmp_path / "old"
    late.mkdir()
    for name, size in {**RANK_FILES[0], **SHARED}.items():
        (late / name).write_bytes(b"\x01" * size)
    stale = C(6, old.epoch)
    files = ckpt.upload_rank_files(store, KEYS, stale, late)
    with pytest.raises(LeaseHeldError, match="lease lost to new-driver"):
        ckpt.commit(store, KEYS, stale, files, trainer_state(6), old.epoch, lambda: old.assert_held(store, KEYS))
    with pytest.raises(ValueError, match="not the folder of lease epoch"):  # nor into the holder's folder
        ckpt.commit(store, KEYS, committed, files, trainer_state(6), old.epoch, no_fence)
    assert not store.exists(KEYS.checkpoint_file(stale, ckpt.COMMITTED))
    assert store.read(KEYS.checkpoint_file(committed, ckpt.COMMITTED)) == listing

    step, found = ckpt.find_resume(store, KEYS, verify=True)
    assert step == committed and found.uncommitted == [stale] and not found.skipped
    node = tmp_path / "node"
    for rank in (0, 1):
        fetch.download_for_rank(store, KEYS, step, node, dp_rank=rank, everything=False)
    assert (node / committed.tag / "mp_rank_00_model_states.pt").read_bytes() == bytes([6]) * 50
    # The holder's next GC removes the stale leftovers, never its own checkpoint.
    fence = lambda: new.assert_held(store, KEYS)  # noqa: E731
    assert ckpt.garbage_collect(store, KEYS, keep_last=1, newest=committed, fence=fence) == [stale]
    assert ckpt.inventory(store, KEYS).sound == [committed]


def test_newer_epoch_wins_over_an_older_commit_of_the_same_step(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 5)  # old layout, committed by an earlier holder
    make_checkpoint(store, tmp_path, 5, epoch=2)
    assert ckpt.find_resume(store, KEYS, verify=True)[0] == C(5, 2)
    assert ckpt.garbage_collect(store, KEYS, keep_last=1, newest=C(5, 2), fence=no_fence) == [C(5)]


def test_gc_of_the_parent_keeps_the_checkpoint_a_warm_start_pinned(tmp_path):
    from pipeline.records import WarmStartLineage, WarmStartPin
    from pipeline.train import warm_start

    store = open_store(f"file://{tmp_path}/store")
    parent = make_checkpoint(store, tmp_path, 4, epoch=2)
    lineage = WarmStartLineage(
        run="r", step=4, dataset="d", dataset_version=1, checkpoint=store.uri(KEYS.checkpoint(parent))
    )
    assert warm_start.parent_checkpoint(lineage) == parent
    legacy = lineage.model_copy(update={"checkpoint": store.uri(KEYS.checkpoint(4))})
    assert warm_start.parent_checkpoint(legacy) == C(4)  # lineages recorded before epochs were in the key
    warm_start.pin_parent(store, lineage, "child")  # the child's driver, before its workers start
    WarmStartPin.for_child("gone", C(2), ttl_s=-1).write(store, "r")  # a dead child's pin, expired
    make_checkpoint(store, tmp_path, 2)
    for step in (6, 8):  # the parent keeps training meanwhile
        make_checkpoint(store, tmp_path, step, epoch=2)
    assert ckpt.garbage_collect(store, KEYS, keep_last=1, newest=C(8, 2), fence=no_fence) == [C(6, 2), C(2)]
    assert ckpt.inventory(store, KEYS).sound == [C(8, 2), parent]
    node = tmp_path / "child-node"  # the child downloads and verifies it
    assert fetch.download_for_rank(store, KEYS, parent, node, dp_rank=0, everything=True) > 0
    warm_start.unpin_parent(store, "r", "child")  # the child committed its own first checkpoint
    warm_start.unpin_parent(store, "r", "child")  # idempotent (the driver's end of launch)
    assert ckpt.garbage_collect(store, KEYS, keep_last=1, newest=C(8, 2), fence=no_fence) == [parent]


class FakeEngine:
    def __init__(self):
        self.loaded = None

    def load(self, directory, tag, warm_start):
        self.loaded = tag


def _restore_rank(rank, world, port, root, out):
    import torch.distributed as dist

    from pipeline.train.checkpoint_manager import CheckpointManager, discover

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    store = open_store(root)
    base = Path(out)
    engine = FakeEngine()
    dirs = (base / f"scratch{rank}", base / f"node{rank}")
    manager = CheckpointManager(store, KEYS, LeaseToken("x", 9), engine, {}, {"compatibility": {}}, dirs, 2)
    point = discover(store, KEYS, False, None, {})
    sizes = manager.restore(point, universal=False, local_rank=0, dp_rank=rank)
    (base / f"rank{rank}.json").write_text(
        json.dumps({"first": point.checkpoint.tag, "loaded": engine.loaded, "skipped": manager.skipped, "sizes": sizes})
    )
    dist.destroy_process_group()


def test_a_rank_whose_partition_fails_verification_takes_every_rank_to_the_next_older(tmp_path):
    """Only rank 1's own partition of the newest checkpoint is corrupt: both ranks agree (one
    all-gather of the outcome), neither hangs, both load the next older checkpoint."""
    import socket

    import torch.multiprocessing as mp

    store = open_store(f"file://{tmp_path}/store")
    make_checkpoint(store, tmp_path, 2, epoch=1)
    newest = make_checkpoint(store, tmp_path, 4, epoch=1)
    corrupt(store, newest, "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    out.mkdir()
    mp.start_processes(_restore_rank, args=(2, port, store.root_uri, str(out)), nprocs=2, start_method="fork")
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["first"] == "step-00000004-e0001" and result["loaded"] == "step-00000002-e0001"
        assert len(result["skipped"]) == 1
        assert result["skipped"][0].startswith("step-00000004-e0001: checkpoint step-00000004-e0001 of run 'r' is")
        assert "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt" in result["skipped"][0]
    assert results[0]["sizes"] == results[1]["sizes"] and len(results[0]["sizes"]) == 2
