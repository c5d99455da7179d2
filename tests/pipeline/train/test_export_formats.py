"""A run's exports load without Sora (pipeline/train/export_formats.py): an RMSNorm model's Llama
checkpoint (`runs/<run>/hf-llama`) gives Sora's logits and greedy tokens under plain transformers'
`LlamaForCausalLM`, and is byte for byte what `LlamaForCausalLM.save_pretrained` writes; the Sora
export (`runs/<run>/hf`) carries its modeling code, so an ADN model loads with
`trust_remote_code=True`. The last test loads both in a Python process where `import sora` and
`import pipeline` fail.

One process, no DeepSpeed: the tensors come from a model in memory in reverse order, as the
trainer's rank 0 receives them (test_export.py covers the Sora export's bytes)."""

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from pipeline.config import load_config
from pipeline.data.tokenizer_step import store_tokenizer
from pipeline.errors import UserError
from pipeline.pretrain.objective import LanguageModeling
from pipeline.records import ExportInfo
from pipeline.storage import open_store
from pipeline.train.export import export_plan
from pipeline.train.export_formats import RunExports
from pipeline.train.export_llama import llama_config, llama_name
from sora import SoraConfig, SoraForCausalLM, SoraForSequenceClassification
from sora.tokenizer import train_bpe

VOCAB = 300
INFO = ExportInfo(step=3, dataset="d", dataset_version=1, run="r")
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
SORA_CODE = {"cache.py", "configuration_sora.py", "init.py", "layers.py", "modeling_sora.py", "norms.py"}
NEW_TOKENS = 12


@pytest.fixture
def store(tmp_path):
    """A local store holding a small tokenizer, and a manifest stand-in naming it."""
    store = open_store(f"file://{tmp_path}/root")
    tokenizer = train_bpe(["alpha beta gamma delta " * 20], VOCAB)
    block = store_tokenizer(store, "datasets/d", tokenizer, 0, 1)
    return store, SimpleNamespace(tokenizer=block)


def trained_like(seed: int, **overrides) -> SoraForCausalLM:
    """The tiny preset with every weight moved off its init (norm gains included: a swapped or
    missing norm would be invisible with all-ones gains)."""
    torch.manual_seed(seed)
    model = SoraForCausalLM(SoraConfig.from_preset("tiny", vocab_size=VOCAB, **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


def export(store, manifest, run, model, export_format, scratch, max_shard_size="2GB") -> dict[str, str]:
    """As the trainer does: the plan from the skeleton, rank 0's exports fed the tensors one at a time."""
    skeleton = LanguageModeling().export_skeleton(model.config)
    plan = export_plan(skeleton, max_shard_size)
    exports = RunExports(store, run, skeleton, plan, scratch, export_format, max_shard_size)
    state = model.state_dict()
    for name in reversed(plan.names):
        exports.write(name, state[name])
    return exports.finish(manifest, INFO)


def sora_outputs(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, greedy continuation) of Sora's own model."""
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    return logits, tokens


def stored_folder(store, run: str, folder: str) -> dict[str, bytes]:
    return {key.rsplit("/", 1)[1]: store.read(key) for key in store.list(f"runs/{run}/{folder}")}


@pytest.mark.parametrize(
    "tied,kv_heads,max_shard_size",
    [(True, 2, "2GB"), (False, 2, "300KB"), (False, 4, "2GB")],
    ids=["tied-gqa", "untied-gqa-sharded", "untied-mha"],
)
def test_llama_export_gives_sora_logits_and_tokens_under_plain_llama(store, tmp_path, tied, kv_heads, max_shard_size):
    store, manifest = store
    model = trained_like(0, tie_word_embeddings=tied, num_key_value_heads=kv_heads)
    uris = export(store, manifest, "r", model, "auto", tmp_path / "scratch", max_shard_size)
    assert uris == {"llama": store.uri("runs/r/hf-llama"), "sora": store.uri("runs/r/hf")}
    assert not [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()]  # local shards deleted

    # The weights are what transformers itself writes for that Llama model.
    reference = LlamaForCausalLM(llama_config(model.config))
    reference.load_state_dict({llama_name(name): value for name, value in model.state_dict().items()})
    reference.save_pretrained(tmp_path / "reference", max_shard_size=max_shard_size)
    files = stored_folder(store, "r", "hf-llama")
    weights = {path.name for path in (tmp_path / "reference").iterdir() if "safetensors" in path.name}
    assert ("model.safetensors.index.json" in weights) == (max_shard_size == "300KB")
    assert set(files) == weights | TOKENIZER_FILES | {"config.json", "generation_config.json", "sora_export.json"}
    for name in weights:
        assert files[name] == (tmp_path / "reference" / name).read_bytes(), name
    config = json.loads(files["config.json"])
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config and config["num_key_value_heads"] == kv_heads
    assert config["tie_word_embeddings"] == tied

    loaded = AutoModelForCausalLM.from_pretrained(store.path("runs/r/hf-llama")).eval()
    assert type(loaded) is LlamaForCausalLM
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    expected_logits, expected_tokens = sora_outputs(model, ids)
    with torch.no_grad():
        logits = loaded(input_ids=ids).logits
        tokens = loaded.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    assert (logits - expected_logits).abs().max().item() <= 1e-5
    assert torch.equal(tokens, expected_tokens)

    text = "alpha beta gamma delta"
    stored = AutoTokenizer.from_pretrained(store.path("runs/r/hf"))
    assert AutoTokenizer.from_pretrained(store.path("runs/r/hf-llama"))(text).input_ids == stored(text).input_ids


def test_a_classifier_export_is_a_llama_classifier_with_the_same_scores(store, tmp_path):
    """Fine-tune runs export `SoraForSequenceClassification`: its Llama counterpart pools the same
    last real token (right padding, found by `pad_token_id`) and scores it with the same head."""
    store, manifest = store
    torch.manual_seed(8)
    config = SoraConfig.from_preset("tiny", vocab_size=VOCAB, num_key_value_heads=2, pad_token_id=0)
    config.id2label, config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    model = SoraForSequenceClassification(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    with torch.device("meta"):
        skeleton = SoraForSequenceClassification(config)
    plan = export_plan(skeleton)
    exports = RunExports(store, "c", skeleton, plan, tmp_path / "scratch")
    for name in plan.names:
        exports.write(name, model.state_dict()[name])
    exports.finish(manifest, INFO)
    loaded = AutoModelForSequenceClassification.from_pretrained(store.path("runs/c/hf-llama")).eval()
    assert type(loaded) is LlamaForSequenceClassification and loaded.config.id2label == config.id2label
    ids = torch.randint(1, VOCAB, (3, 16), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids)
    mask[1, 10:], mask[2, 5:] = 0, 0
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        assert (loaded(input_ids=ids, attention_mask=mask).logits - expected).abs().max().item() <= 1e-5


def test_sora_export_carries_its_code_and_a_norm_without_llama_gets_no_llama_export(store, tmp_path):
    store, manifest = store
    model = trained_like(2, norm="layernorm")
    assert export(store, manifest, "ln", model, "auto", tmp_path / "scratch") == {"sora": store.uri("runs/ln/hf")}
    files = stored_folder(store, "ln", "hf")
    assert SORA_CODE <= set(files) and not store.list("runs/ln/hf-llama")
    auto_map = json.loads(files["config.json"])["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_sora.SoraForCausalLM"
    assert auto_map["AutoConfig"] == "configuration_sora.SoraConfig"
    # With sora imported, the registered local classes load it (the code attached changes nothing here).
    assert type(AutoModelForCausalLM.from_pretrained(store.path("runs/ln/hf"))) is SoraForCausalLM
    rms = trained_like(3)
    assert set(export(store, manifest, "s", rms, "sora", tmp_path / "scratch")) == {"sora"}


def test_re_export_without_a_llama_checkpoint_deletes_the_earlier_one(store, tmp_path):
    """A run exported with its Llama checkpoint, then again with export_format sora: the old hf-llama/
    (complete-looking, with the old weights) is gone."""
    store, manifest = store
    model = trained_like(4)
    assert set(export(store, manifest, "re", model, "auto", tmp_path / "a")) == {"llama", "sora"}
    assert "config.json" in stored_folder(store, "re", "hf-llama")
    assert set(export(store, manifest, "re", model, "sora", tmp_path / "b")) == {"sora"}
    assert store.list("runs/re/hf-llama") == [] and "config.json" in stored_folder(store, "re", "hf")


def test_export_format_both_is_refused_at_config_validation_for_a_norm_llama_lacks():
    with pytest.raises(UserError, match="export_format: both needs norm: rmsnorm"):
        load_config("default", {"train.export_format": "both", "train.model_overrides": {"norm": "adn"}})
    assert load_config("default", {"train.export_format": "both"}).train.export_format == "both"
    assert load_config("default", {"train.model_overrides": {"norm": "adn"}}).train.export_format == "auto"


# Runs in a venv of its own, without Sora: its site-packages names the test venv's site-packages in a
# .pth file, so torch and transformers import, but the .pth files there (the editable install of
# sora and pipeline among them) are not processed: `sora` and `pipeline` cannot be imported.
WITHOUT_SORA = r"""
import sys

for name in ("sora", "pipeline"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"import {name} succeeded")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

llama_dir, adn_dir, ids_file, out_file, new_tokens = sys.argv[1:6]
ids = torch.load(ids_file)
results = {}
for label, folder, remote in (("llama", llama_dir, False), ("adn", adn_dir, True)):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
    AutoTokenizer.from_pretrained(folder)("alpha beta")
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        n = int(new_tokens)
        tokens = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    results[label] = (type(model).__module__, type(model).__name__, logits, tokens)
results["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("sora", "pipeline"))
torch.save(results, out_file)
"""


def venv_without_sora(folder: Path) -> Path:
    """A new venv (no pip, nothing installed) that sees this venv's packages but not their .pth
    files, so not the editable install of sora and pipeline; returns its python."""
    import site
    import venv

    venv.EnvBuilder(with_pip=False).create(folder)
    python = folder / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(target, "packages_without_sora.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_exports_load_in_a_venv_without_sora(store, tmp_path):
    store, manifest = store
    llama = trained_like(4, num_key_value_heads=2, tie_word_embeddings=False)
    adn = trained_like(5, norm="adn")
    export(store, manifest, "llama", llama, "both", tmp_path / "scratch")
    export(store, manifest, "adn", adn, "auto", tmp_path / "scratch")
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(6))
    torch.save(ids, tmp_path / "ids.pt")
    script = tmp_path / "load_without_sora.py"
    script.write_text(WITHOUT_SORA)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    python = venv_without_sora(tmp_path / "venv")
    command = [str(python), "-I", str(script), store.path("runs/llama/hf-llama"), store.path("runs/adn/hf")]
    command += [str(tmp_path / "ids.pt"), str(tmp_path / "out.pt"), str(NEW_TOKENS)]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = torch.load(tmp_path / "out.pt")
    assert results["loaded"] == []
    for label, model, module in (("llama", llama, "transformers.models.llama"), ("adn", adn, "transformers_modules")):
        loaded_module, class_name, logits, tokens = results[label]
        assert loaded_module.startswith(module) and class_name.endswith("ForCausalLM"), (loaded_module, class_name)
        expected_logits, expected_tokens = sora_outputs(model, ids)
        assert (logits - expected_logits).abs().max().item() <= 1e-5, label
        assert torch.equal(tokens, expected_tokens), label


def test_a_pretrain_run_writes_both_exports(dataset_root):
    """The trainer's path: a 2-worker ZeRO-3 run (GQA, untied head, `export_format: auto` with
    RMSNorm) gathers each tensor once and writes `hf/` (with its code) and `hf-llama/`, which give
    the same logits."""
    from traingen import train_config

    from pipeline.pretrain.launch import pretrain

    shape = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    overrides = {**shape, "tie_word_embeddings": False}
    config = train_config(
        dataset_root, "formats", max_steps=4, eval_interval=4, checkpoint_interval=4, model_overrides=overrides
    )
    pretrain(config, quiet=True)
    store = open_store(config.storage.root)
    assert SORA_CODE <= {key.rsplit("/", 1)[1] for key in store.list("runs/formats/hf")}
    sora = AutoModelForCausalLM.from_pretrained(store.path("runs/formats/hf")).eval()
    llama = AutoModelForCausalLM.from_pretrained(store.path("runs/formats/hf-llama")).eval()
    assert type(sora) is SoraForCausalLM and type(llama) is LlamaForCausalLM
    ids = torch.randint(0, sora.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (sora(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max().item() <= 1e-5
