"""The real converter and DeepSpeed's universal loading under ZeRO-2: a checkpoint saved on 1 rank
loads on 2 ranks, each of which downloaded only the part of the universal copy that `loaded_by`
selects (into a node directory of its own, so no rank can read another's files)."""

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.keys import CheckpointId, RunKeys
from pipeline.records import TrainerState
from pipeline.storage import open_store
from pipeline.train import checkpoint as ckpt
from pipeline.train import universal

pytestmark = [pytest.mark.distributed]

KEYS = RunKeys("z2")
CHECKPOINT = CheckpointId(3, 1)


def _model():
    torch.manual_seed(0)
    linear = torch.nn.Linear
    return torch.nn.Sequential(linear(16, 64), torch.nn.ReLU(), linear(64, 64), torch.nn.ReLU(), linear(64, 4))


def _rank(rank, world, port, root, out):
    import deepspeed
    import torch.distributed as dist

    # A forked child must not use the parent's intra-op thread pool: once earlier tests in this
    # pytest process ran torch ops, the child's first matmul waits forever for the pool's threads,
    # which fork did not copy (this hung the CI run). One thread never enters the pool.
    torch.set_num_threads(1)

    from pipeline.train.engine import Engine

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo")
    model = _model()
    config = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8 // world, "gradient_accumulation_steps": 1}
    config |= {"zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    if world == 2:
        config["checkpoint"] = {"load_universal": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    base, store = Path(out), open_store(root)
    if world == 1:  # train a little and save: the checkpoint to resume with another layout
        for _ in range(3):
            engine.backward(engine(torch.randn(8, 16)).pow(2).mean())
            engine.step()
        engine.save_checkpoint(str(base / "saved"), tag=CHECKPOINT.tag, save_latest=False)
        torch.save(engine.module.state_dict(), base / "weights.pt")
    else:
        parameters = Engine.universal_parameters(SimpleNamespace(engine=engine))
        node = base / f"node{rank}"
        downloaded = universal.download_for_rank(store, KEYS, CHECKPOINT, node, parameters, lambda: None)
        engine.load_checkpoint(str(node), tag=universal.local_folder(CHECKPOINT))
        saved, loaded = torch.load(base / "weights.pt"), engine.module.state_dict()
        equal = all(torch.equal(saved[name], loaded[name]) for name in saved)
        result = {"parameters": sorted(parameters), "downloaded": downloaded, "equal": equal}
        (base / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _launch(world, root, out):
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_rank, args=(world, port, root, str(out)), nprocs=world, start_method="fork")


def test_zero2_ranks_load_a_universal_copy_from_only_their_share(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    _launch(1, store.root_uri, tmp_path)
    files = ckpt.upload_rank_files(store, KEYS, CHECKPOINT, tmp_path / "saved" / CHECKPOINT.tag)
    state = TrainerState(step=3, loader={}, dp_size=1, pp=1, world_size=1, dataset="d", dataset_version=1)
    ckpt.commit(store, KEYS, CHECKPOINT, files, state, epoch=1, fence=lambda: None)
    universal.ensure_converted(store, KEYS, CHECKPOINT, tmp_path / "converter", lambda: None, "z2 lease epoch 2")
    marker = universal.converted(store, KEYS, CHECKPOINT)
    copy = sum(f.size for f in marker.files)

    _launch(2, store.root_uri, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["equal"] for r in ranks)  # the weights DeepSpeed restored are the saved ones
    names = {name for name, _ in _model().named_parameters()}
    assert set(ranks[0]["parameters"]) | set(ranks[1]["parameters"]) == names  # every parameter has a home
    assert set(ranks[0]["parameters"]) != set(ranks[1]["parameters"])
    assert all(r["downloaded"] < copy for r in ranks)  # neither rank downloaded the whole copy
