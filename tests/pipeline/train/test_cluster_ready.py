"""Defects that only show on a cluster or with two processes, reproduced on 2 CPU workers:
one writer per run, no silent restart, changed settings on resume, offload, ZeRO-3 construction,
per-rank resume downloads, even validation split, precision decided on the workers."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from traingen import train_config

from pipeline.data.shards import pack
from pipeline.errors import UserError
from pipeline.keys import RunKeys
from pipeline.pretrain.launch import pretrain
from pipeline.storage import open_store
from pipeline.storage.lease import acquire_lease
from pipeline.train import checkpoint as ckpt
from pipeline.train.loader import to_tensors, validation_batches
from pipeline.train.metrics import read_rows
from sora import causal_lm_loss


def test_second_writer_on_a_run_exits_2_naming_the_holder(dataset_root, tmp_path):
    config = train_config(dataset_root, "busy")
    store = open_store(config.storage.root)
    acquire_lease(store, RunKeys("busy").lease, 60, owner="node-a:1234")  # a first `sora pretrain` runs
    path = tmp_path / "busy.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    second = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "pretrain", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert second.returncode == 2, second.stderr[-2000:]
    assert "pretrain of run 'busy' already running: node-a:1234 holds" in second.stderr
    assert "Traceback" not in second.stderr
    assert not store.list(RunKeys("busy").checkpoints)


@pytest.mark.distributed
def test_unusable_checkpoints_or_changed_settings_fail_before_training(dataset_root):
    store = open_store(dataset_root.storage.root)
    keys = RunKeys("guarded")
    pretrain(train_config(dataset_root, "guarded", stop_after_steps=4), quiet=True)
    before = read_rows(store, keys.metrics)
    assert [r["step"] for r in before] == [1, 2, 3, 4]
    assert before[0]["parameters_per_rank"][0] < sum(before[0]["parameters_per_rank"])  # partitioned

    with pytest.raises(UserError, match=r"strategy: 'zero3' -> 'zero1'; zero_stage: 3 -> 1"):
        pretrain(train_config(dataset_root, "guarded", strategy="zero1"), quiet=True)

    newest = ckpt.inventory(store, keys).sound[0]
    assert newest.step == 4 and newest.epoch is not None  # saved under the lease epoch's key
    for key in store.list(keys.checkpoint(newest)):
        if "optim_states" in key:
            store.write(key, b"damaged")  # size no longer matches COMMITTED
    damaged = r"none can be resumed from: step-00000004-e\d{4}: file .*optim_states.pt has 7 bytes"
    with pytest.raises(UserError, match=damaged):
        pretrain(train_config(dataset_root, "guarded"), quiet=True)
    assert read_rows(store, keys.metrics) == before  # nothing truncated, nothing retrained
    assert ckpt.inventory(store, keys).broken.keys() == {newest}  # nothing deleted either


@pytest.mark.distributed
def test_zero3_with_cpu_offload_trains(dataset_root):
    config = train_config(dataset_root, "offload", offload=True, max_steps=6, checkpoint_interval=3, eval_interval=3)
    pretrain(config, quiet=True)
    rows = read_rows(open_store(config.storage.root), RunKeys("offload").metrics)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]


def test_validation_split_gives_every_rank_the_same_number_of_batches():
    class Blocks:
        def __len__(self):
            return 13  # not a multiple of dp_size x micro_batch

        def batch(self, ids):
            return to_tensors(np.tile(np.arange(5), (len(ids), 1)), np.full(len(ids), 5))

    per_rank = [validation_batches(Blocks(), 4, 8, 2, rank, 3) for rank in range(3)]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    assert all(inputs.shape[0] == 2 for batches in per_rank for inputs, _ in batches)


def test_an_elastic_run_validates_on_the_same_samples_at_every_worker_count():
    class Blocks:  # row i holds the sample id i
        def __len__(self):
            return 37

        def batch(self, ids):
            return to_tensors(np.repeat(np.asarray(ids)[:, None], 5, axis=1), np.full(len(ids), 5))

    def samples(dp: int, micro: int) -> list[int]:
        rows = [
            inputs[:, 0] for rank in range(dp) for inputs, _ in validation_batches(Blocks(), 3, 16, micro, rank, dp)
        ]
        return sorted(int(i) for batch in rows for i in batch)

    # workers [1, 4] with global_batch 16, micro_batch 4 (loop.py: 1 -> 4 x 4, 2 -> 4 x 2, 4 -> 4 x 1).
    assert samples(1, 4) == samples(2, 4) == samples(4, 4) == list(range(32))


def test_rows_with_one_token_are_never_written_and_never_give_nan():
    # 3 documents + EOS each = 9 tokens; block_len 4 -> rows of 4, 4 and a tail of 1 (only EOS).
    blocks, valid = pack([np.array([5, 6]), np.array([7, 8]), np.array([9, 10])], 0, 1, 4, np.dtype("uint16"))
    assert valid.tolist() == [4, 4] and blocks.shape == (2, 4)
    inputs, labels = to_tensors(np.array([[5, 0, 1, 1]]), np.array([1]))  # a legacy one-token row
    assert (labels == -100).all()
    loss = causal_lm_loss(torch.randn(1, 3, 16, requires_grad=True), labels)
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_precision_is_decided_on_the_workers():
    from pipeline.train.spec import WorkerSpec

    assert "bf16" not in WorkerSpec.__dataclass_fields__  # the driver may be a CPU head node
    import torch.distributed as dist

    from pipeline.train.trainer import resolve_bf16

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    try:
        assert resolve_bf16("auto", torch.device("cpu")) is False
        assert resolve_bf16("bf16", torch.device("cpu")) is True
    finally:
        dist.destroy_process_group()
