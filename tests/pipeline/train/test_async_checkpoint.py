"""Asynchronous checkpoints: training goes on while a checkpoint uploads, rank 0 commits only once
every rank's files are up, one upload in flight (a save waits for the previous one), failures
surface in the main thread; and a worker killed mid-upload resumes from the previous commit."""

import os
import threading
from pathlib import Path

import pytest
import torch
from faulty_store import FaultyStore, StorageFault
from traingen import expected_ids, train_config

from pipeline.keys import CheckpointId as C
from pipeline.keys import RunKeys
from pipeline.records import RankUpload, TrainerState, read_version
from pipeline.storage import open_store
from pipeline.storage.lease import acquire_lease
from pipeline.train import checkpoint as ckpt
from pipeline.train.metrics import read_rows
from pipeline.train.spec import LeaseToken
from pipeline.train.state import Progress

KEYS = RunKeys("r")
FIXED = {"dp_size": 2, "pp": 1, "world_size": 2, "dataset": "d", "dataset_version": 1, "compatibility": {}}


class SavingEngine:
    """DeepSpeed's save of one rank: its ZeRO partition (rank 0 also a shared file)."""

    def __init__(self, rank):
        self.rank, self.copy_there = rank, []  # per save: was a local copy there before it?

    def save(self, directory, tag):
        self.copy_there.append(Path(directory).exists())
        folder = Path(directory) / tag
        folder.mkdir(parents=True)
        (folder / f"zero_pp_rank_{self.rank}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(3000))
        if self.rank == 0:
            (folder / "mp_rank_00_model_states.pt").write_bytes(os.urandom(500))


class Consumed:
    def __init__(self, progress):
        self.progress = progress

    def state_dict(self):
        return {"consumed": self.progress.step * 8}


def _rank(rank, world, port, root, token, out):
    import torch.distributed as dist

    from pipeline.train.checkpoint_manager import CheckpointManager

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    real = open_store(root)
    store = FaultyStore(real)
    progress, engine = Progress(), SavingEngine(rank)
    states = {"progress": progress, "loader": Consumed(progress)}
    dirs = (Path(out) / f"scratch{rank}", Path(out) / f"node{rank}")

    def manager(**options):
        return CheckpointManager(store, KEYS, token, engine, states, dict(FIXED), dirs, 2, **options)

    def train_to(step):  # steps: a collective in the main thread each, while an upload runs
        while progress.step < step:
            progress.advance(256)
            total = torch.ones(1)
            dist.all_reduce(total)
            assert total.item() == world

    uploads = manager(asynchronous=True, timeout_s=60)
    # 1. Rank 1's upload hangs: training goes on, nothing is committed, the state is step 4's.
    gate = threading.Event()
    if rank == 1:
        store.stall("upload_file", gate)
    train_to(4)
    assert uploads.save(4) is None  # nothing committed yet
    train_to(6)
    uploads.poll()
    assert uploads.take_upload_seconds() is None  # still going
    dist.barrier()
    if rank == 0:
        assert not real.exists(KEYS.checkpoint_file(C(4, token.epoch), ckpt.COMMITTED))
    dist.barrier()
    gate.set()
    assert uploads.wait() == 4  # every rank knows it committed
    if rank == 0:
        checkpoint = C(4, token.epoch)
        assert ckpt.inventory(real, KEYS).sound == [checkpoint]
        state = TrainerState.load(real, KEYS, checkpoint)
        assert (state.step, state.loader) == (4, {"consumed": 32})  # taken at the save, not at step 6
        names = {f.name for f in ckpt.read_committed(real, KEYS, checkpoint).files}
        assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in names and "mp_rank_00_model_states.pt" in names
        assert ckpt.content_problem(real, KEYS, checkpoint, which=lambda name: True) is None
        assert real.list(RankUpload.folder(KEYS, checkpoint, "x").rsplit("/", 1)[0]) == []  # listings removed
    assert uploads.take_upload_seconds() > 0

    # 2. Backpressure: the save of step 12 waits until the upload of step 8 is done.
    later = threading.Event()
    if rank == 1:
        store.stall("upload_file", later)
    train_to(8)
    assert uploads.save(8) is None
    if rank == 1:
        threading.Timer(0.3, later.set).start()
    train_to(12)
    assert uploads.save(12) == 8  # rank 0 waited for the commit, which waited for rank 1's files
    assert rank == 0 or later.is_set()  # rank 1 waited for its own upload
    train_to(16)
    assert uploads.save(16, wait=True) == 16  # the end of a run: committed before it returns
    assert engine.copy_there == [False] * 4  # one local copy at a time: the previous went once up
    if rank == 0:
        assert ckpt.inventory(real, KEYS).sound == [C(16, token.epoch), C(12, token.epoch)]

    # 3. A failed upload is raised in the main thread; rank 0 gives up waiting and commits nothing.
    failing = manager(asynchronous=True, timeout_s=1.0)
    if rank == 1:
        store.fail("upload_file")
    train_to(20)
    failing.save(20)
    if rank == 1:
        with pytest.raises(StorageFault, match="upload_file failed"):
            failing.wait()
    else:
        with pytest.raises(TimeoutError, match=r"rank\(s\) \[1\] did not finish uploading within 1 s"):
            failing.wait()
        assert ckpt.inventory(real, KEYS).sound[0] == C(16, token.epoch)  # the previous commit is the newest
    dist.barrier()

    # 4. Synchronous saves (train.async_checkpoint: false) commit before returning.
    train_to(24)
    assert manager().save(24) == 24
    if rank == 0:
        found = ckpt.inventory(real, KEYS)
        assert found.sound == [C(24, token.epoch), C(16, token.epoch)] and found.uncommitted == []
    (Path(out) / f"done{rank}").touch()
    dist.destroy_process_group()


def test_uploads_run_behind_training_commit_when_every_rank_is_up_and_fail_loudly(tmp_path):
    import socket

    import torch.multiprocessing as mp

    store = open_store(f"file://{tmp_path}/store")
    lease = acquire_lease(store, KEYS.lease, 600, owner="driver")
    token = LeaseToken(lease.owner, lease.epoch)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    out.mkdir()
    mp.start_processes(_rank, args=(2, port, store.root_uri, token, str(out)), nprocs=2, start_method="fork")
    assert (out / "done0").exists() and (out / "done1").exists()


@pytest.mark.distributed
def test_a_worker_killed_mid_upload_resumes_from_the_previous_commit(dataset_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SORA_KILL_WORKER", "1:8:upload")  # rank 1 dies while uploading step 8's files
    monkeypatch.setenv("SORA_FAULT_DIR", str(tmp_path / "faults"))
    from pipeline.pretrain.launch import pretrain

    config = train_config(dataset_root, "killed-upload", record_sample_ids=True, max_failures=2)
    result = pretrain(config, quiet=True)
    assert (tmp_path / "faults" / "killed-1-8-upload").exists()  # the fault really fired
    store, keys = open_store(config.storage.root), RunKeys("killed-upload")
    rows = read_rows(store, keys.metrics)
    assert [r["step"] for r in rows] == list(range(1, 13))
    # Step 8 was not committed when rank 1 died: the next attempt resumed from step 4.
    assert [r["step"] for r in rows if "resume_download_bytes" in r] == [5]
    assert result["attempts"]["node_losses"] + result["attempts"]["failures"] == 1
    ids = [i for row in read_rows(store, keys.samples) for i in row["ids"]]
    assert ids == expected_ids(read_version(store, "test"), 1234, 0, 12 * 8)  # steps 5-8 redone, nothing twice
    # Step 8's folder, half-written by the killed attempt, was written again and verifies.
    sound = ckpt.inventory(store, keys).sound
    assert [c.step for c in sound] == [12, 8]
    assert all(ckpt.content_problem(store, keys, c, which=lambda name: True) is None for c in sound)
    assert any(r.get("checkpoint_upload_s") for r in rows)  # the background upload's time is in the rows
    assert store.exists("runs/killed-upload/hf/model.safetensors")


def test_a_hung_store_under_rank_0s_own_upload_is_a_timeout_naming_the_checkpoint(tmp_path):
    """Nothing else bounds rank 0's upload (the others wait for it in Ray Train's barrier): a store
    call that never returns is raised as a TimeoutError once the thread shows no progress."""
    from pipeline.train.checkpoint_upload import BackgroundUploads

    store = FaultyStore(open_store(f"file://{tmp_path}/store"))
    checkpoint = C(4, 1)
    SavingEngine(0).save(tmp_path / "local", checkpoint.tag)
    released = threading.Event()
    store.stall("upload_file", released)
    committed = []
    uploads = BackgroundUploads(store, KEYS, 0, 1, "a", lambda *args: committed.append(args), timeout_s=0.2)
    uploads.start(checkpoint, tmp_path / "local", None)
    try:
        with pytest.raises(TimeoutError, match=rf"checkpoint {checkpoint.tag}: rank 0's upload made no progress"):
            uploads.join()
        assert not committed and not uploads.abandon(wait_s=0)  # the thread still holds the local copy
    finally:
        released.set()
        assert uploads.abandon(wait_s=10)  # released, it stops at its next file and commits nothing
    assert not committed
