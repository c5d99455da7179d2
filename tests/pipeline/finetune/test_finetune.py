"""Fine-tuning runs on the pretrain stage's loop: 2 CPU workers, DeepSpeed, checkpoints, export."""

import json

import pytest
import torch

from pipeline.config.run import RunConfig
from pipeline.finetune.launch import finetune
from pipeline.keys import RunKeys
from pipeline.train.metrics import read_rows

pytestmark = pytest.mark.distributed


def _with(config: RunConfig, **finetune_fields) -> RunConfig:
    raw = config.model_dump(mode="json")
    raw["finetune"].update(finetune_fields)
    return RunConfig.model_validate(raw)


def _load_export(store, run, tmp_path):
    from sora import SoraForSequenceClassification

    target = tmp_path / run
    for key in store.list(RunKeys(run).export):
        store.download_file(key, target / key.rsplit("/", 1)[-1])
    return SoraForSequenceClassification.from_pretrained(target), json.loads((target / "sora_export.json").read_text())


def test_full_finetune_from_pretrained_and_scratch_exports_classifiers(pretrained_run, tmp_path):
    config, store = pretrained_run
    outcome = finetune(config)
    assert set(outcome) == {"pretrained", "scratch"}
    for init in ("pretrained", "scratch"):
        run = f"base-ft-full-{init}"
        rows = read_rows(store, RunKeys(run).metrics)
        assert rows[-1]["step"] == 8 and all(0 <= r["val_accuracy"] <= 1 for r in rows if "val_accuracy" in r)
        model, info = _load_export(store, run, tmp_path)
        assert info["init"] == init and info["method"] == "full" and info["step"] == 8
        assert model.config.num_labels == 4 and model.config.id2label[0] == "alpha"
    # Pretrained init really starts from the pretrained trunk: before any step its embeddings are
    # the export's; the scratch run's are not (same seed, different source).
    pre, _ = _load_export(store, "base-ft-full-pretrained", tmp_path)
    scratch, _ = _load_export(store, "base-ft-full-scratch", tmp_path)
    assert not torch.equal(pre.model.embed_tokens.weight, scratch.model.embed_tokens.weight)
    # A second call does no work.
    again = finetune(config)
    assert all(result.get("skipped") for result in again.values())


def test_lora_finetune_resumes_after_a_killed_worker_and_exports_merged_weights(pretrained_run, tmp_path, monkeypatch):
    from peft import PeftModel  # noqa: F401  (the export must not need it)

    config, store = pretrained_run
    config = _with(config, method="lora", lora_rank=4, lora_alpha=8)
    monkeypatch.setenv("SORA_KILL_WORKER", "1:6")
    monkeypatch.setenv("SORA_FAULT_DIR", str(tmp_path))
    finetune(config)
    rows = read_rows(store, RunKeys("base-ft-lora-pretrained").metrics)
    assert [r["step"] for r in rows] == list(range(1, 9))  # no step lost or repeated across the restart
    model, info = _load_export(store, "base-ft-lora-pretrained", tmp_path)
    assert info["method"] == "lora"
    names = [n for n, _ in model.named_parameters()]
    assert not any("lora" in n for n in names)  # adapters merged into plain weights
