"""Pretrain stage on 2 CPU workers (Ray Train + DeepSpeed over gloo): training, export, exact resume,
elastic resume, killed workers, checkpoints on S3; pipeline parallelism at 4 stages on 4 workers
(resumed on another pipeline layout, exported stage by stage)."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from traingen import expected_ids, train_config
from transformers import AutoModelForCausalLM

from pipeline.keys import RunKeys
from pipeline.pretrain.launch import pretrain
from pipeline.records import read_version
from pipeline.storage import open_store
from pipeline.train import checkpoint as ckpt
from pipeline.train.loader import validation_batches
from pipeline.train.metrics import read_rows
from pipeline.train.shard_cache import ShardCache
from pipeline.train.streaming import ValidationSamples
from sora import causal_lm_loss

pytestmark = [pytest.mark.distributed]


def metrics(store, run):
    return read_rows(store, RunKeys(run).metrics)


def samples(store, run):
    return read_rows(store, RunKeys(run).samples)


def committed(store, run):
    return [c.step for c in ckpt.inventory(store, RunKeys(run)).sound]


def exported_state(store, run, tmp_path):
    (tmp_path / run).mkdir(parents=True, exist_ok=True)
    for key in store.list(f"runs/{run}/hf"):
        (tmp_path / run / key.rsplit("/", 1)[1]).write_bytes(store.read(key))
    return tmp_path / run


def hf_val_loss(path, store, config):
    """Validation loss of the exported model, on the same validation batches the trainer used."""
    manifest = read_version(store, "test")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    cache = ShardCache(Path(tempfile.mkdtemp()), 1 << 30)
    blocks = ValidationSamples(store, [(manifest, 1.0)], config.train.seed, cache)
    batches = validation_batches(
        blocks, config.train.eval_batches, config.train.global_batch, config.train.micro_batch, 0, 1
    )
    blocks.close()
    total = count = 0.0
    with torch.no_grad():
        for inputs, labels in batches:
            tokens = (labels != -100).sum().item()
            total += causal_lm_loss(model(inputs).logits, labels).item() * tokens
            count += tokens
    return total / count


def test_zero3_trains_checkpoints_and_exports(dataset_root, tmp_path):
    config = train_config(dataset_root, "zero3-basic", max_steps=16, eval_interval=8)
    result = pretrain(config, quiet=True)
    store = open_store(config.storage.root)
    rows = metrics(store, "zero3-basic")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert np.mean([r["loss"] for r in rows[-4:]]) < np.mean([r["loss"] for r in rows[:4]]) - 0.3
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    assert committed(store, "zero3-basic") == [16, 12]  # keep_last 2
    newest = ckpt.inventory(store, RunKeys("zero3-basic")).sound[0]
    assert newest.tag.startswith("step-00000016-e")  # saved under the run lease's epoch
    state = json.loads(store.read(RunKeys("zero3-basic").checkpoint_file(newest, "trainer_state.json")))
    assert state["loader"]["consumed"] == 16 * 8 and state["dataset_version"] == 1
    # The HF export reloads with transformers and reproduces the trained model's validation loss.
    path = exported_state(store, "zero3-basic", tmp_path)
    assert result["export"].endswith("runs/zero3-basic/hf")
    assert abs(hf_val_loss(path, store, config) - rows[-1]["val_loss"]) < 1e-4


def test_exact_resume_same_losses_parameters_and_samples(dataset_root, tmp_path):
    store = open_store(dataset_root.storage.root)
    pretrain(train_config(dataset_root, "straight", record_sample_ids=True), quiet=True)
    pretrain(train_config(dataset_root, "resumed", record_sample_ids=True, stop_after_steps=6), quiet=True)
    assert committed(store, "resumed")[0] == 6
    pretrain(train_config(dataset_root, "resumed", record_sample_ids=True), quiet=True)

    straight, resumed = metrics(store, "straight"), metrics(store, "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    # Per-rank resume I/O: each rank fetched its own ZeRO partition and the node fetched each shared
    # file once (whichever rank came first), so together the ranks downloaded one checkpoint's worth.
    # Before: every rank fetched the whole checkpoint (2x in total). Step 12's files have the sizes
    # step 6's had (same model and optimizer), step 6 itself is garbage-collected by now.
    rank0, rank1 = resumed[6]["resume_download_bytes"]
    newest = ckpt.inventory(store, RunKeys("resumed")).sound[0]
    marker = json.loads(store.read(RunKeys("resumed").checkpoint_file(newest, "COMMITTED")))
    one_checkpoint = sum(f["size"] for f in marker["files"])
    assert rank0 + rank1 == pytest.approx(one_checkpoint, rel=0.01)
    assert 0 < min(rank0, rank1) and max(rank0, rank1) < 0.8 * one_checkpoint
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in straight], rtol=0, atol=1e-6)
    a = load_file(exported_state(store, "straight", tmp_path) / "model.safetensors")
    b = load_file(exported_state(store, "resumed", tmp_path) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)

    ids = [i for row in samples(store, "resumed") for i in row["ids"]]
    assert ids == [i for row in samples(store, "straight") for i in row["ids"]]
    manifest = read_version(store, "test")
    assert len(ids) == 12 * 8 <= sum(e.rows for e in manifest.split("train"))
    assert len(set(ids)) == len(ids)  # no duplicate
    assert ids == expected_ids(manifest, 1234, 0, len(ids))  # no gap: exactly the global order


def test_resume_on_one_worker_continues_the_same_sample_sequence(dataset_root):
    store = open_store(dataset_root.storage.root)
    pretrain(train_config(dataset_root, "elastic", record_sample_ids=True, stop_after_steps=6), quiet=True)
    pretrain(train_config(dataset_root, "elastic", record_sample_ids=True, workers=1, micro_batch=4), quiet=True)
    rows = samples(store, "elastic")
    assert [r["step"] for r in rows] == list(range(1, 13))
    ids = [i for row in rows for i in row["ids"]]
    assert ids == expected_ids(read_version(store, "test"), 1234, 0, 12 * 8)
    losses = [r["loss"] for r in metrics(store, "elastic")]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.fixture
def four_cpus(ray_session):
    """Ray with 4 logical CPUs (one per worker, on however many cores) for the test, then 2 again."""
    import ray

    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    ray.shutdown()
    ensure_ray(RayConfig(num_cpus=4))
    yield
    ray.shutdown()
    ensure_ray(RayConfig(num_cpus=2))


def test_pipeline_four_stages_resume_on_another_layout_and_export(dataset_root, tmp_path, four_cpus):
    """2 stages x 2 data-parallel (4 workers) for 4 steps; then 4 stages on the same 4 workers
    (another pipeline layout: resumed from the checkpoint's universal copy) to step 6; then 4 stages
    again (resumed from its own 4-stage checkpoint) to step 8, and the export. The losses and the
    exported weights are those of an uninterrupted 2-stage run on 2 workers (a pipeline's
    initialization depends on its partition, so the reference starts with 2 stages too)."""
    pipe = dict(strategy="pipeline", max_steps=8, eval_interval=4)  # checkpoints at 4, at the stops and at 8
    store = open_store(dataset_root.storage.root)
    pretrain(train_config(dataset_root, "pipe-straight", pipeline_stages=2, **pipe), quiet=True)
    pretrain(train_config(dataset_root, "pipe4", pipeline_stages=2, workers=4, stop_after_steps=4, **pipe), quiet=True)
    pretrain(train_config(dataset_root, "pipe4", pipeline_stages=4, workers=4, stop_after_steps=6, **pipe), quiet=True)
    assert committed(store, "pipe4") == [6, 4]
    config = train_config(dataset_root, "pipe4", pipeline_stages=4, workers=4, **pipe)
    pretrain(config, quiet=True)

    rows, straight = metrics(store, "pipe4"), metrics(store, "pipe-straight")
    assert [r["step"] for r in rows] == list(range(1, 9))
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in straight], rtol=0, atol=1e-5)
    assert rows[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], abs=1e-5)
    # The parameters each rank held, per launch: 2 stages x 2 replicas (ranks 0-1 stage 0), then 4
    # stages, each holding a part of the model (the tied embedding on the first and the last).
    held = {r["step"]: r["parameters_per_rank"] for r in rows if "parameters_per_rank" in r}
    assert sorted(held) == [1, 5, 7] and held[5] == held[7] and min(held[7]) > 0
    first, _, last, _ = held[1]
    assert held[1] == [first, first, last, last] and sum(held[7]) == first + last > max(held[7]) * 2
    # The export (each stage's tensors streamed to rank 0) reloads with transformers, reproduces the
    # pipeline's validation loss, and holds the weights the 2-stage run exported.
    path = exported_state(store, "pipe4", tmp_path)
    assert abs(hf_val_loss(path, store, config) - rows[-1]["val_loss"]) < 1e-4
    ours = load_file(path / "model.safetensors")
    theirs = load_file(exported_state(store, "pipe-straight", tmp_path) / "model.safetensors")
    assert ours.keys() == theirs.keys() and "lm_head.weight" not in ours  # tied: stored once
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-5)


def test_killed_worker_is_restarted_from_last_committed_checkpoint(dataset_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SORA_KILL_WORKER", "1:6")  # rank 1 dies (os._exit) right after step 6
    monkeypatch.setenv("SORA_FAULT_DIR", str(tmp_path / "faults"))
    config = train_config(dataset_root, "killed", record_sample_ids=True, max_failures=2)
    pretrain(config, quiet=True)
    assert (tmp_path / "faults" / "killed-1-6").exists()  # the fault really fired
    store = open_store(config.storage.root)
    assert [r["step"] for r in metrics(store, "killed")] == list(range(1, 13))
    rows = samples(store, "killed")
    assert [r["step"] for r in rows] == list(range(1, 13))  # steps 5-6 redone once, not twice
    straight = samples(store, "straight") or None
    if straight:
        assert [r["ids"] for r in rows] == [r["ids"] for r in straight]
    assert store.exists("runs/killed/hf/model.safetensors")


def test_an_error_that_repeats_stops_the_run_after_max_failures(dataset_root, monkeypatch):
    from pipeline.train.attempts import BudgetSpent

    monkeypatch.setenv("SORA_KILL_WORKER", "1:3:raise")  # rank 1 raises in step 3, at every attempt
    config = train_config(dataset_root, "buggy", max_failures=1, max_steps=4, checkpoint_interval=2)
    with pytest.raises(BudgetSpent, match=r"2 failures \(max_failures 1\), 0 node losses.*rank 1 raises at step 3"):
        pretrain(config, quiet=True)
    store = open_store(config.storage.root)
    assert max(r["step"] for r in metrics(store, "buggy")) <= 3  # never got past the bug


@pytest.mark.s3
def test_checkpoints_and_export_on_s3(tmp_path, s3_bucket, ray_session):
    from datagen import data_config, make_corpus

    from pipeline.data.stage import preprocess
    from pipeline.data.summary import Reporter

    bucket, settings = s3_bucket
    make_corpus(tmp_path / "corpus")
    data = data_config(f"s3://{bucket}/sora", str(tmp_path / "corpus"), settings=settings)
    preprocess(data, Reporter(quiet=True))
    config = train_config(data, "on-s3", max_steps=4, checkpoint_interval=2, eval_interval=2, record_sample_ids=True)
    pretrain(
        train_config(
            data,
            "on-s3",
            max_steps=4,
            checkpoint_interval=2,
            eval_interval=2,
            record_sample_ids=True,
            stop_after_steps=2,
        ),
        quiet=True,
    )
    pretrain(config, quiet=True)  # resumes from the step-2 checkpoint on S3
    store = open_store(config.storage.root, settings)
    assert committed(store, "on-s3") == [4, 2]
    assert [r["step"] for r in samples(store, "on-s3")] == [1, 2, 3, 4]
    path = exported_state(store, "on-s3", tmp_path)
    assert abs(hf_val_loss(path, store, config) - metrics(store, "on-s3")[-1]["val_loss"]) < 1e-4
