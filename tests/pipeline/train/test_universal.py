"""Resuming with another layout (issue 17 item 5): a checkpoint's universal-format copy is made once
and kept next to it with a completion marker; a killed conversion or an interrupted upload is
redone from scratch; each rank downloads only the part of the copy it loads.

A fake converter (a subprocess, like ds_to_universal) writes the universal layout in a few bytes,
so these tests run in seconds; tests/pipeline/train/test_pretrain.py resumes a real DeepSpeed
checkpoint on another worker count through the same path."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from pipeline.keys import CheckpointId as C
from pipeline.keys import RunKeys
from pipeline.records import TrainerState
from pipeline.storage import open_store
from pipeline.storage.lease import acquire_lease
from pipeline.train import checkpoint as ckpt
from pipeline.train import universal
from pipeline.train.spec import LeaseToken

KEYS = RunKeys("r")
CHECKPOINT = C(6, 1)
# A ZeRO-3 save on 2 ranks: per-rank model states and optimizer partitions, written with dp=2.
ORIGINAL = {
    "zero_pp_rank_0_mp_rank_00_model_states.pt": 30,
    "zero_pp_rank_1_mp_rank_00_model_states.pt": 30,
    "zero_pp_rank_0_mp_rank_00_optim_states.pt": 600,
    "zero_pp_rank_1_mp_rank_00_optim_states.pt": 600,
}
PARAMETERS = {"embed.weight": 200, "head.weight": 100}  # fp32, exp_avg, exp_avg_sq each this size

FAKE_CONVERTER = """
import argparse, os, shutil, signal, sys
from pathlib import Path
parser = argparse.ArgumentParser()
for name in ("input_folder", "output_folder", "num_extract_workers", "num_merge_workers"):
    parser.add_argument("--" + name)
parser.add_argument("--inject_missing_state", action="store_true")
args = parser.parse_args()
with open(os.environ["FAKE_CONVERT_LOG"], "a") as log:
    log.write("converted\\n")
out = Path(args.output_folder)
(out / "zero").mkdir(parents=True)
(out / "zero" / "optimizer_state.pt").write_bytes(b"o" * 40)
for name, size in PARAMETERS.items():
    (out / "zero" / name).mkdir()
    for key in ("fp32", "exp_avg", "exp_avg_sq"):
        (out / "zero" / name / (key + ".pt")).write_bytes(b"p" * size)
    if os.environ.get("FAKE_CONVERT_DIE"):  # killed midway, like an OOM kill
        os.kill(os.getpid(), signal.SIGKILL)
for path in Path(args.input_folder).glob("*model_states.pt"):
    shutil.copy(path, out)
"""
UNIVERSAL_FILES = {
    "zero/optimizer_state.pt": 40,
    **{f"zero/{name}/{key}.pt": size for name, size in PARAMETERS.items() for key in ("fp32", "exp_avg", "exp_avg_sq")},
    **{name: size for name, size in ORIGINAL.items() if "model_states" in name},
}


def trainer_state(step):
    return TrainerState(
        step=step, loader={"consumed": 8 * step}, dp_size=2, pp=1, world_size=2, dataset="d", dataset_version=1
    )


def commit_checkpoint(store, tmp_path, checkpoint: C, fill: bytes) -> None:
    """Commit a ZeRO-3 save on 2 ranks (ORIGINAL's files, each `fill` repeated) as `checkpoint`."""
    local = tmp_path / "saved" / checkpoint.tag
    local.mkdir(parents=True)
    for name, size in ORIGINAL.items():
        (local / name).write_bytes(fill * size)
    files = ckpt.upload_rank_files(store, KEYS, checkpoint, local)
    ckpt.commit(store, KEYS, checkpoint, files, trainer_state(checkpoint.step), epoch=1, fence=lambda: None)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A committed checkpoint in a local store, and the fake converter in place of ds_to_universal."""
    store = open_store(f"file://{tmp_path}/store")
    commit_checkpoint(store, tmp_path, CHECKPOINT, b"s")
    script = tmp_path / "fake_converter.py"
    script.write_text(f"PARAMETERS = {PARAMETERS!r}\n{FAKE_CONVERTER}")
    monkeypatch.setattr(universal, "COMMAND", [sys.executable, str(script)])
    monkeypatch.setenv("FAKE_CONVERT_LOG", str(tmp_path / "conversions.log"))
    return store, tmp_path


def conversions(tmp_path: Path) -> int:
    log = tmp_path / "conversions.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def original_bytes(store) -> int:
    return sum(f.size for f in ckpt.read_committed(store, KEYS, CHECKPOINT).files)


def test_a_rank_loads_only_what_deepspeed_reads_from_the_universal_copy():
    for everything in (None, {"embed.weight", "head.weight"}):
        assert all(universal.loaded_by(name, everything) for name in UNIVERSAL_FILES if "pp_rank_1" not in name)
    assert not universal.loaded_by("zero_pp_rank_1_mp_rank_00_model_states.pt", None)  # ZeRO-3 reads rank 0's
    assert universal.loaded_by("mp_rank_00_model_states.pt", {"x"})  # ZeRO-1/2 model states: every rank
    assert universal.loaded_by("zero/embed.weight/fp32.pt", {"embed.weight"})
    assert not universal.loaded_by("zero/head.weight/exp_avg.pt", {"embed.weight"})  # another rank's partition
    assert universal.loaded_by("zero/optimizer_state.pt", set())


def _interrupted_upload(root: str, node: str) -> None:
    os.environ["SORA_FAILPOINTS"] = "universal_before_marker"
    universal.ensure_converted(open_store(root), KEYS, CHECKPOINT, Path(node), lambda: None, "r lease epoch 2")


def test_a_killed_conversion_or_an_interrupted_upload_is_redone_from_scratch(setup, monkeypatch):
    import multiprocessing

    store, tmp_path = setup
    node = tmp_path / "node"
    monkeypatch.setenv("FAKE_CONVERT_DIE", "1")
    with pytest.raises(RuntimeError, match="to universal format failed \\(killed by signal 9\\)"):
        universal.ensure_converted(store, KEYS, CHECKPOINT, node, lambda: None, "r lease epoch 2")
    assert universal.converted(store, KEYS, CHECKPOINT) is None and not store.list(KEYS.universal(CHECKPOINT))
    assert not (node / universal.local_folder(CHECKPOINT)).exists()  # the partial output stays in scratch
    monkeypatch.delenv("FAKE_CONVERT_DIE")

    # Killed after uploading, before the marker (the whole rank dies: a fail point's os._exit).
    store.write(KEYS.universal_file(CHECKPOINT, "zero/stale/fp32.pt"), b"left by an older attempt")
    child = multiprocessing.get_context("fork").Process(target=_interrupted_upload, args=(store.root_uri, str(node)))
    child.start()
    child.join()
    assert child.exitcode == 75 and conversions(tmp_path) == 2
    assert store.exists(KEYS.universal_file(CHECKPOINT, "zero/optimizer_state.pt"))
    assert universal.converted(store, KEYS, CHECKPOINT) is None  # uploaded files without a marker: no copy

    downloaded = universal.ensure_converted(store, KEYS, CHECKPOINT, node, lambda: None, "r lease epoch 2")
    assert conversions(tmp_path) == 3  # converted again, from scratch
    assert downloaded == 0  # the original's files were downloaded and verified by the first attempt
    marker = universal.converted(store, KEYS, CHECKPOINT)
    assert {f.name: f.size for f in marker.files} == UNIVERSAL_FILES
    assert marker.writer == "r lease epoch 2" and marker.source == CHECKPOINT.tag
    stored = {key.split("/universal/", 1)[1] for key in store.list(KEYS.universal(CHECKPOINT))}
    assert stored == set(UNIVERSAL_FILES) | {"CONVERTED"}  # the stale partial upload is gone
    folder = node / universal.local_folder(CHECKPOINT)  # this node keeps the converted files
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == set(UNIVERSAL_FILES)
    assert not (node / CHECKPOINT.tag).exists()  # the original's node copy is no longer needed

    assert universal.ensure_converted(store, KEYS, CHECKPOINT, node, lambda: None, "r lease epoch 3") == 0
    assert conversions(tmp_path) == 3  # the marker: nothing converted, nothing uploaded again
    assert universal.converted(store, KEYS, CHECKPOINT).writer == "r lease epoch 2"


def test_gc_removes_the_universal_copy_with_its_checkpoint_and_listing_ignores_it(setup):
    store, tmp_path = setup
    universal.ensure_converted(store, KEYS, CHECKPOINT, tmp_path / "node", lambda: None, "r lease epoch 2")
    found = ckpt.inventory(store, KEYS)
    assert found.sound == [CHECKPOINT] and not found.broken and not found.uncommitted
    assert ckpt.find_resume(store, KEYS, verify=True)[0] == CHECKPOINT
    newer = C(8, 2)
    directory = tmp_path / "newer"
    directory.mkdir()
    (directory / "mp_rank_00_model_states.pt").write_bytes(b"n" * 10)
    files = ckpt.upload_rank_files(store, KEYS, newer, directory)
    ckpt.commit(store, KEYS, newer, files, trainer_state(8), 2, lambda: None)
    assert ckpt.garbage_collect(store, KEYS, keep_last=1, newest=newer, fence=lambda: None) == [CHECKPOINT]
    assert store.list(KEYS.checkpoint(CHECKPOINT)) == []  # universal/ and CONVERTED went with it


class ShardedEngine:
    """Loads like ZeRO-1/2 on 2 ranks: rank 0 holds embed.weight's optimizer state, rank 1 head.weight's."""

    def __init__(self, rank):
        self.rank, self.loaded = rank, None

    def universal_parameters(self):
        return {["embed.weight", "head.weight"][self.rank]}

    def load(self, directory, tag, warm_start):
        files = {p.relative_to(Path(directory) / tag).as_posix() for p in (Path(directory) / tag).rglob("*")}
        self.loaded = tag, sorted(f for f in files if f.endswith(".pt"))


def _restore_rank(rank, world, port, root, out, attempt, epoch):
    import torch.distributed as dist

    from pipeline.train.checkpoint_manager import CheckpointManager, prepare_resume, share

    store, base = open_store(root), Path(out)
    dirs = (base / attempt / f"scratch{rank}", base / attempt / f"node{rank}")  # two fresh nodes
    token = LeaseToken("me", epoch)
    # As Trainer._build: rank 0 finds the checkpoint and converts it (written on 2 ranks, loaded
    # with another layout) before the ranks meet; then the others learn the outcome.
    found, converted = prepare_resume(store, KEYS, False, None, {}, (4, 1), dirs[1], token) if rank == 0 else (None, 0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    engine = ShardedEngine(rank)
    manager = CheckpointManager(store, KEYS, token, engine, {}, {"compatibility": {}}, dirs, 2)
    try:
        point = share(found)
        sizes = manager.restore(point, universal=True, local_rank=0, dp_rank=rank)
        sizes[0] += dist_sum(converted)  # rank 0's download for the conversion
        result = {"sizes": sizes, "loaded": engine.loaded}
    except (ckpt.ResumeError, RuntimeError) as error:  # a failed conversion: RuntimeError, retried by the driver
        result = {"error": str(error)}
    (base / f"{attempt}-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def dist_sum(value: int) -> int:
    import torch
    import torch.distributed as dist

    total = torch.tensor([value])
    dist.all_reduce(total)
    return int(total.item())


def restore_on_two_ranks(store, tmp_path, attempt, epoch):
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    args = (2, port, store.root_uri, str(out), attempt, epoch)
    mp.start_processes(_restore_rank, args=args, nprocs=2, start_method="fork")
    return [json.loads((out / f"{attempt}-rank{r}.json").read_text()) for r in (0, 1)]


def test_resume_with_another_layout_converts_once_and_each_rank_downloads_what_it_loads(setup, monkeypatch):
    store, tmp_path = setup
    epoch = acquire_lease(store, KEYS.lease, 120, owner="me").epoch  # the fence before the marker passes
    monkeypatch.setenv("FAKE_CONVERT_DIE", "1")
    for result in restore_on_two_ranks(store, tmp_path, "killed", epoch):  # the conversion is killed: no rank hangs
        assert "converting checkpoint step-00000006-e0001 of run 'r' to universal format failed" in result["error"]
    assert universal.converted(store, KEYS, CHECKPOINT) is None
    monkeypatch.delenv("FAKE_CONVERT_DIE")

    first = restore_on_two_ranks(store, tmp_path, "first", epoch)  # the next attempt converts from scratch
    assert conversions(tmp_path) == 2
    marker = store.read(KEYS.universal_file(CHECKPOINT, "CONVERTED"))
    shared = 40 + ORIGINAL["zero_pp_rank_0_mp_rank_00_model_states.pt"]  # optimizer_state.pt + rank 0's model states
    head = 3 * PARAMETERS["head.weight"]
    # Rank 0 converted: it downloaded the original once and loads its own output; rank 1 (another
    # node) downloads from the copy only what it loads. Before: each node downloaded the whole
    # original (1260 bytes) and converted it.
    assert first[0]["sizes"] == first[1]["sizes"] == [original_bytes(store), shared + head]
    assert first[1]["loaded"] == [
        "step-00000006-e0001-universal",
        ["zero/head.weight/exp_avg.pt", "zero/head.weight/exp_avg_sq.pt", "zero/head.weight/fp32.pt"]
        + ["zero/optimizer_state.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"],
    ]

    uploaded = {key: (tmp_path / "store" / key).stat().st_mtime_ns for key in store.list(KEYS.universal(CHECKPOINT))}
    second = restore_on_two_ranks(store, tmp_path, "second", epoch)  # the marker: no conversion, no upload
    assert conversions(tmp_path) == 2 and store.read(KEYS.universal_file(CHECKPOINT, "CONVERTED")) == marker
    assert {key: (tmp_path / "store" / key).stat().st_mtime_ns for key in uploaded} == uploaded
    embed = 3 * PARAMETERS["embed.weight"]
    assert second[0]["sizes"] == [shared + embed, shared + head]
    assert sum(second[0]["sizes"]) < original_bytes(store)


def test_rank_0_converts_before_any_collective_and_a_failure_reaches_every_rank(setup, monkeypatch):
    """checkpoint_manager.prepare_resume runs on rank 0 before the Ray barrier (no process group yet)."""
    from pipeline.train.checkpoint_manager import ResumePoint, prepare_resume

    store, tmp_path = setup
    lease = acquire_lease(store, KEYS.lease, 60, what="test")
    token = LeaseToken(lease.owner, lease.epoch)
    same = prepare_resume(store, KEYS, False, None, {}, (2, 1), tmp_path / "n0", token)
    assert isinstance(same[0], ResumePoint) and same[1] == 0 and conversions(tmp_path) == 0  # same layout
    monkeypatch.setenv("FAKE_CONVERT_DIE", "1")
    failed, _ = prepare_resume(store, KEYS, False, None, {}, (1, 1), tmp_path / "n1", token)
    assert isinstance(failed, RuntimeError) and "killed by signal 9" in str(failed)  # `share` raises it everywhere
    monkeypatch.delenv("FAKE_CONVERT_DIE")
    point, downloaded = prepare_resume(store, KEYS, False, None, {}, (1, 1), tmp_path / "n2", token)
    assert point.checkpoint == CHECKPOINT and downloaded == original_bytes(store)
    assert universal.converted(store, KEYS, CHECKPOINT) is not None and conversions(tmp_path) == 2
    lease.release()


def test_a_checkpoint_whose_files_fail_verification_while_converting_falls_back_to_an_older_one(setup):
    """The fallback happens in prepare_resume, before the barrier: never a second conversion inside
    a torch collective (restore only downloads a copy that exists)."""
    from pipeline.train.checkpoint_manager import prepare_resume

    store, tmp_path = setup
    older = C(3, 1)
    commit_checkpoint(store, tmp_path, older, b"o")
    damaged = KEYS.checkpoint_file(CHECKPOINT, "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    store.write(damaged, b"x" * ORIGINAL["zero_pp_rank_1_mp_rank_00_optim_states.pt"])  # same size, other bytes
    lease = acquire_lease(store, KEYS.lease, 60, what="test")
    token = LeaseToken(lease.owner, lease.epoch)
    point, _ = prepare_resume(store, KEYS, False, None, {}, (1, 1), tmp_path / "n", token)
    assert point.checkpoint == older and any(CHECKPOINT.tag in reason for reason in point.skipped)
    assert universal.converted(store, KEYS, older) is not None and universal.converted(store, KEYS, CHECKPOINT) is None
    lease.release()


def test_a_pipeline_without_zero_is_refused_on_another_layout_before_ray_starts(tmp_path):
    """A pipeline checkpoint with zero_stage 0 has no optimizer partitions, which the universal
    conversion needs: another layout is refused on the driver (`preflight_resume`, before Ray), in
    one line; the same layout goes on, and so does ZeRO-1 on another layout (test_pretrain.py
    resumes 2 stages x 2 on 4 stages)."""
    from pipeline.config.run import RunConfig
    from pipeline.train.launch import preflight_resume
    from sora import SoraConfig

    store = open_store(f"file://{tmp_path}/store")
    model_config = SoraConfig.from_preset("tiny")

    def config(zero_stage: int, workers: int, stages: int) -> RunConfig:
        fields = dict(run="r", strategy="pipeline", zero_stage=zero_stage, workers=workers, pipeline_stages=stages)
        return RunConfig.model_validate({"storage": {"root": store.root_uri}, "train": fields})

    def commit_two_stages(zero_stage: int, checkpoint: C) -> None:
        """A committed checkpoint written with 2 stages x 1 data-parallel."""
        compatibility = ckpt.compatibility_fields(config(zero_stage, 2, 2).train, model_config.to_dict(), False)
        state = trainer_state(checkpoint.step).model_copy(
            update={"dp_size": 1, "pp": 2, "compatibility": compatibility}
        )
        (tmp_path / checkpoint.tag).mkdir()
        (tmp_path / checkpoint.tag / "mp_rank_00_model_states.pt").write_bytes(b"m")
        files = ckpt.upload_rank_files(store, KEYS, checkpoint, tmp_path / checkpoint.tag)
        ckpt.commit(store, KEYS, checkpoint, files, state, 1, lambda: None)

    commit_two_stages(0, C(4, 1))
    assert preflight_resume(store, config(0, 2, 2), model_config, restart=False) == C(4, 1)
    for workers, stages in ((4, 4), (4, 2)):  # other stages; the same stages, other data parallelism
        with pytest.raises(ckpt.ResumeError) as refused:
            preflight_resume(store, config(0, workers, stages), model_config, restart=False)
        message = str(refused.value)
        assert "\n" not in message and "step-00000004-e0001 was written with 2 pipeline stages x 1 " in message
        assert message.endswith("use workers: 2, pipeline_stages: 2")
    commit_two_stages(1, C(8, 1))
    assert preflight_resume(store, config(1, 4, 4), model_config, restart=False) == C(8, 1)
