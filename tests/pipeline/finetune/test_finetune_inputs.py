"""Bad input of the fine-tune and evaluate stages: one clear line before any worker starts."""

import subprocess
import sys

import pytest
import yaml
from evalgen import labelled_config

from pipeline.errors import UserError
from pipeline.evaluation.checkpoints import evaluate_run
from pipeline.finetune.launch import finetune
from pipeline.storage import open_store


def test_finetune_and_evaluate_without_a_pretrained_export_fail_with_one_line(tmp_path):
    config = labelled_config(tmp_path)
    for stage in (finetune, evaluate_run):
        with pytest.raises(UserError, match=r"run 'sora-tiny' has no complete pretrained export at .*sora pretrain"):
            stage(config)
    assert not open_store(config.storage.root).list("runs")  # nothing half-written

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "finetune", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # One line of error; the CLI's note of where library logs go may precede it.
    errors = [line for line in out.stderr.splitlines() if not line.startswith("library warnings and logs:")]
    assert len(errors) == 1 and "no complete pretrained export" in errors[0]


def test_an_export_without_its_lineage_file_counts_as_missing(tmp_path):
    config = labelled_config(tmp_path)
    store = open_store(config.storage.root)
    store.write("runs/sora-tiny/hf/config.json", b"{}")  # a killed export: config.json but no sora_export.json
    with pytest.raises(UserError, match="no complete pretrained export"):
        finetune(config)


def test_finetune_batch_must_split_over_workers():
    from pipeline.config.finetune import FinetuneConfig

    with pytest.raises(ValueError, match=r"finetune.global_batch \(30\) must be divisible by micro_batch x workers"):
        FinetuneConfig(global_batch=30, micro_batch=8, workers=2)
