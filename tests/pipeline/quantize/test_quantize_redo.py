"""A quantized checkpoint follows its source export: it carries the source's remote code
(`modeling_sora.py`, which its config.json's `auto_map` names), it is skipped only while the source
export (URI, step, validation loss) and the method's settings are those it was made from, and a
redo replaces every file of the earlier checkpoint. The task's scratch space is the node cache."""

import json

import pytest
import torch

from pipeline.config.quantize import QuantizeConfig
from pipeline.quantize.launch import current_records, task_memory
from pipeline.quantize.record import QuantizeRecord
from pipeline.quantize.task import quantize_export
from pipeline.records import ExportInfo
from pipeline.storage import open_store
from pipeline.train.export_remote_code import attach_remote_code, remote_code_files

SETTINGS = QuantizeConfig(methods=["int8"], prompt_tokens=8, new_tokens=8, repeats=1)


@pytest.fixture
def source(tmp_path, monkeypatch):
    """(store, run): a tiny random export with the Sora modeling code attached, as a run exports it;
    the node cache directory under tmp_path (it must hold the task's scratch space)."""
    from sora import SoraConfig, SoraForCausalLM

    monkeypatch.setenv("SORA_CACHE", str(tmp_path / "cache"))
    store = open_store(f"file://{tmp_path / 'store'}")
    torch.manual_seed(0)
    model = SoraForCausalLM(SoraConfig.from_preset("tiny"))
    folder = tmp_path / "store" / "runs" / "src" / "hf"
    folder.mkdir(parents=True)
    attach_remote_code(model.config, folder)
    model.save_pretrained(folder)
    ExportInfo(step=1, val_loss=5.0, dataset="synthetic", dataset_version=1, run="src").write_local(folder)
    return store, "src"


def test_quantized_checkpoint_is_redone_when_its_source_changes_and_carries_the_code(source, tmp_path):
    store, run = source
    record = quantize_export(store, run, ["int8"], SETTINGS, "cpu")["int8"]
    files = {key.rsplit("/", 1)[1] for key in store.list(f"runs/{run}-int8/hf")}
    code = {path.name for path in remote_code_files()}
    assert "modeling_sora.py" in code and code <= files  # what config.json's auto_map points at
    assert json.loads(store.read(f"runs/{run}-int8/hf/config.json"))["auto_map"]
    assert (record.source_step, record.source_val_loss, record.int4_group_size) == (1, 5.0, None)
    assert not [p for p in (tmp_path / "cache" / "quantize").rglob("*") if p.is_file()]  # scratch cleaned
    assert current_records(store, SETTINGS, run) == ({"int8": record}, [])  # done: skipped

    # The source is re-exported (another step): the method is stale and redone, no earlier file kept.
    info = ExportInfo(step=2, val_loss=4.5, dataset="synthetic", dataset_version=1, run=run)
    store.write(f"runs/{run}/hf/sora_export.json", info.to_bytes())
    assert current_records(store, SETTINGS, run) == ({}, ["int8"])
    store.write(f"runs/{run}-int8/hf/model-00001-of-00002.safetensors", b"an earlier sharded checkpoint")
    redone = quantize_export(store, run, ["int8"], SETTINGS, "cpu")["int8"]
    assert (redone.source_step, redone.source_val_loss) == (2, 4.5)
    assert not store.exists(f"runs/{run}-int8/hf/model-00001-of-00002.safetensors")
    assert ExportInfo.load(store, f"{run}-int8").step == 2
    assert current_records(store, SETTINGS, run)[1] == []


def test_int4_record_is_stale_under_another_group_size(source):
    store, run = source
    record = quantize_export(store, run, ["int8"], SETTINGS, "cpu")["int8"]
    # An int4 record as the CUDA task writes it (int4 cannot run on CPU): group size 128.
    int4 = record.model_copy(update={"method": "int4", "int4_group_size": 128})
    int4.write(store, f"{run}-int4")
    assert current_records(store, QuantizeConfig(methods=["int4"], int4_group_size=128), run)[1] == []
    assert current_records(store, QuantizeConfig(methods=["int4"], int4_group_size=64), run)[1] == ["int4"]
    old = QuantizeRecord.from_bytes(store.read(QuantizeRecord.key(f"{run}-int8")))
    legacy = old.model_copy(update={"source_step": None})  # a record from before the identity was kept
    legacy.write(store, f"{run}-int8")
    assert current_records(store, SETTINGS, run)[1] == ["int8"]


def test_cpu_task_memory_is_sized_from_the_weights(source):
    from pipeline.config.run import RayConfig
    from pipeline.ray_runtime import ensure_ray

    store, run = source
    weights = store.size(f"runs/{run}/hf/model.safetensors")
    ensure_ray(RayConfig(num_cpus=2))  # the session's local cluster (started once, as other tests do)
    assert task_memory(store, run) == int(2.5 * weights)
