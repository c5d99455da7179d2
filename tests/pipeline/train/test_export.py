"""The streamed HF export (pipeline/train/export.py) writes what `save_pretrained` writes, byte for
byte: single file or shards + index, tied LM head stored once, fp32, config.json and
generation_config.json; shards go up as soon as their last tensor is in, config.json last. The
fine-tune objective's LoRA merge, one tensor at a time, equals peft's `merge_and_unload`.

One process, no DeepSpeed: the tensors come from a model in memory, in reverse order (the engine's
gathers and pipeline transfers feed `HFExport.write` the same way; the multi-worker runs in
test_pretrain.py and tests/pipeline/finetune/ load their exports with `from_pretrained`)."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.data.tokenizer_step import store_tokenizer
from pipeline.finetune.objective import Classification
from pipeline.finetune.task import FinetuneTask
from pipeline.pretrain.objective import LanguageModeling
from pipeline.records import ExportInfo
from pipeline.storage import open_store
from pipeline.train.export import HFExport, export_plan, upload_hf_model
from sora import SoraConfig, SoraForCausalLM, SoraForSequenceClassification
from sora.tokenizer import train_bpe

SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4)
INFO = ExportInfo(step=3, dataset="d", dataset_version=1, run="r")
LINEAGE_AND_TOKENIZER = {"sora_export.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture
def store(tmp_path):
    """A local store holding a small tokenizer, and a manifest stand-in naming it."""
    store = open_store(f"file://{tmp_path}/root")
    tokenizer = train_bpe(["alpha beta gamma delta " * 20], 300)
    block = store_tokenizer(store, "datasets/d", tokenizer, 0, 1)
    return store, SimpleNamespace(tokenizer=block)


def recorded_uploads(store, monkeypatch) -> list[str]:
    """The file names `store.upload_file` is called with, in order."""
    names: list[str] = []
    upload = store.upload_file

    def recording(key, path, *args):
        names.append(key.rsplit("/", 1)[1])
        return upload(key, path, *args)

    monkeypatch.setattr(store, "upload_file", recording)
    return names


def stored_files(store, run: str) -> dict[str, bytes]:
    return {key.rsplit("/", 1)[1]: store.read(key) for key in store.list(f"runs/{run}/hf")}


def reference_files(model, directory: Path, max_shard_size: str) -> dict[str, bytes]:
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def stream(store, manifest, run, skeleton, tensors, max_shard_size, scratch, after_each=None) -> None:
    """As the trainer does on rank 0: the plan from the skeleton, tensors one at a time (reversed)."""
    plan = export_plan(skeleton, max_shard_size)
    export = HFExport(store, run, plan, scratch)
    for name in reversed(plan.names):
        export.write(name, tensors[name]())
        if after_each:
            after_each(name, plan)
    export.finish(skeleton, manifest, INFO)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("max_shard_size", ["2GB", "60KB"])
def test_streamed_export_is_byte_for_byte_what_save_pretrained_writes(
    store, tmp_path, monkeypatch, tied, max_shard_size
):
    store, manifest = store
    config = SoraConfig.from_preset("tiny", tie_word_embeddings=tied, **SHAPE)
    torch.manual_seed(0)
    model = SoraForCausalLM(config)
    reference = reference_files(model, tmp_path / "reference", max_shard_size)
    store.write("runs/r/hf/config.json", b"{}")  # an earlier, complete export of the run
    uploads = recorded_uploads(store, monkeypatch)
    objective = LanguageModeling()
    sources = objective.export_sources(model)
    tensors = {name: source.value for name, source in sources.items()}

    def uploaded_when_complete(name, plan):  # a shard is in the store once its last tensor is written
        assert not store.exists("runs/r/hf/config.json")  # the earlier export no longer looks complete
        file = plan.entries[name].file
        left = [n for n, e in plan.entries.items() if e.file == file and n not in done]
        done.add(name)
        assert store.exists(f"runs/r/hf/{file}") == (left == [name])

    done: set[str] = set()
    stream(
        store,
        manifest,
        "r",
        objective.export_skeleton(config),
        tensors,
        max_shard_size,
        tmp_path / "s",
        uploaded_when_complete,
    )
    files = stored_files(store, "r")
    assert set(files) == set(reference) | LINEAGE_AND_TOKENIZER
    for name, data in reference.items():
        assert files[name] == data, name
    sharded = max_shard_size == "60KB"
    assert ("model.safetensors" in files) != sharded and ("model.safetensors.index.json" in files) == sharded
    assert (tied and "lm_head.weight" not in str(files.get("model.safetensors.index.json", b""))) or not tied
    assert uploads[-1] == "config.json" and not list((tmp_path / "s").iterdir())  # local shards deleted
    reloaded = SoraForCausalLM.from_pretrained(store.path("runs/r/hf"))
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value) and reloaded.state_dict()[name].dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_upload_hf_model_of_a_model_in_memory_writes_the_same(store, tmp_path, dtype):
    """The one-process call (evaluation's scratch baseline, bf16 on a GPU) goes through the same writer."""
    store, manifest = store
    torch.manual_seed(1)
    model = SoraForCausalLM(SoraConfig.from_preset("tiny", **SHAPE)).to(dtype)
    reference = reference_files(model, tmp_path / "reference", "2GB")
    assert upload_hf_model(store, "m", model, manifest, INFO) == store.uri("runs/m/hf")
    files = stored_files(store, "m")
    assert {name: files[name] for name in reference} == reference and set(files) - set(
        reference
    ) == LINEAGE_AND_TOKENIZER


@pytest.mark.parametrize("method", ["full", "lora"])
def test_classifier_export_merges_lora_per_tensor_like_merge_and_unload(store, tmp_path, method):
    store, manifest = store
    task = FinetuneTask(
        method=method, init="scratch", init_from=None, classes=["a", "b", "c"], suite_prefix="s", max_length=16,
        patience=None, seed=0, lora={"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj", "up_proj"]},
    )  # fmt: skip
    objective = Classification(task)
    model_config = SoraConfig.from_preset("tiny", **SHAPE)
    torch.manual_seed(2)
    model = SoraForSequenceClassification(objective.classifier_config(model_config))
    if method == "lora":
        model = objective._with_lora(model)
        with torch.no_grad():  # trained adapters and head (lora_B starts at zero: a merge would be a no-op)
            for name, param in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    param.normal_(std=0.1)
    plain = copy.deepcopy(model).merge_and_unload() if method == "lora" else model
    reference = reference_files(plain, tmp_path / "reference", "2GB")
    sources = objective.export_sources(model)
    tensors = {name: source.value for name, source in sources.items()}
    stream(store, manifest, "c", objective.export_skeleton(model_config), tensors, "2GB", tmp_path / "s")
    files = stored_files(store, "c")
    for name, data in reference.items():
        assert files[name] == data, name


def test_lora_merge_of_a_bf16_model_is_the_fp32_merge(store):
    """In a bf16 run the export still merges in fp32: a small LoRA update to a larger weight, which
    a bf16 merge (peft's `get_delta_weight` on a GPU) would round away, reaches the exported weight."""
    task = FinetuneTask(
        method="lora", init="scratch", init_from=None, classes=["a", "b"], suite_prefix="s", max_length=16,
        patience=None, seed=0, lora={"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj"]},
    )  # fmt: skip
    objective = Classification(task)
    torch.manual_seed(3)
    model = SoraForSequenceClassification(objective.classifier_config(SoraConfig.from_preset("tiny", **SHAPE)))
    model = objective._with_lora(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "q_proj.base_layer" in name:
                param.fill_(1.0)  # bf16 spacing at 1 is 2^-7: a delta of ~1e-4 rounds away
            elif "lora_B" in name:
                param.normal_(std=1e-4)
    model = model.to(torch.bfloat16)
    reference = copy.deepcopy(model).float().merge_and_unload().state_dict()  # same weights, merged in fp32
    merged = {name: source.value() for name, source in objective.export_sources(model).items()}
    name = "model.layers.0.attn.q_proj.weight"
    assert not torch.equal(reference[name], torch.ones_like(reference[name]))  # the delta shows in fp32
    torch.testing.assert_close(merged[name].float(), reference[name], rtol=0, atol=1e-7)
    assert merged[name].dtype == torch.float32


def test_re_export_leaves_no_file_of_the_earlier_export(store, tmp_path):
    """A sharded re-export of a run exported as one file: the old model.safetensors (which transformers
    would load instead of the new shards) is gone, config.json went first, the new files are complete."""
    store, manifest = store
    config = SoraConfig.from_preset("tiny", **SHAPE)
    torch.manual_seed(0)
    old = SoraForCausalLM(config)
    objective = LanguageModeling()
    skeleton = objective.export_skeleton(config)
    stream(store, manifest, "r", skeleton, {n: s.value for n, s in objective.export_sources(old).items()}, "2GB",
           tmp_path / "a")  # fmt: skip
    assert store.exists("runs/r/hf/model.safetensors")
    store.write("runs/r/hf/stale_extra.txt", b"from an earlier export")
    torch.manual_seed(1)
    new = SoraForCausalLM(config)
    plan = export_plan(skeleton, "60KB")
    export = HFExport(store, "r", plan, tmp_path / "b")
    assert store.list("runs/r/hf") == []  # everything of the earlier export is gone before a tensor is written
    state = new.state_dict()
    for name in plan.names:
        export.write(name, state[name])
    export.finish(skeleton, manifest, INFO)
    files = stored_files(store, "r")
    assert "model.safetensors" not in files and "stale_extra.txt" not in files
    assert set(files) == set(reference_files(new, tmp_path / "reference", "60KB")) | LINEAGE_AND_TOKENIZER
    reloaded = SoraForCausalLM.from_pretrained(store.path("runs/r/hf"))
    assert all(torch.equal(reloaded.state_dict()[name], value) for name, value in state.items())
