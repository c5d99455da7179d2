"""`sora quantize` then `sora evaluate` on a pretrained tiny run: quantization runs in a Ray task,
the int8 checkpoint is evaluated by lm-eval (the `sora` HFLM model) beside the original, and its
held-out bits/byte stays close; a second `quantize` does no work."""

import pytest
import yaml

from pipeline.cli import main
from pipeline.evaluation.checkpoints import evaluate_run
from pipeline.quantize.launch import quantize
from pipeline.quantize.report import heldout_bits_per_byte, quantize_markdown

pytestmark = pytest.mark.distributed  # a Ray local cluster

# Measured: |bits/byte int8 - original| = 0.0001 on this run; int8 rounding may move it a little more.
BPB_TOLERANCE = 0.01


def test_quantize_then_evaluate(pretrained_run, monkeypatch, tmp_path, capsys):
    config, store = pretrained_run
    records = quantize(config)
    record = records["int8"]
    assert record.checkpoint_uri == store.uri("runs/base-int8/hf") and record.device == "cpu"
    assert record.weight_bytes_after < record.weight_bytes_before

    outcome = evaluate_run(config)
    before = heldout_bits_per_byte(store, "base", "pretrained")
    after = heldout_bits_per_byte(store, "base", "int8")
    print(f"held-out bits/byte: original {before:.5f}, int8 {after:.5f}")
    assert outcome["int8"].lineage.checkpoint_uri == record.checkpoint_uri
    assert abs(after - before) < BPB_TOLERANCE
    assert f"| {after:.4f} |" in quantize_markdown(store, "base")

    monkeypatch.setattr("ray.remote", lambda *_: pytest.fail("a task was started for a method already done"))
    assert quantize(config)["int8"] == record
    config_file = tmp_path / "run.yaml"  # the command prints what the stored record measured
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["quantize", str(config_file)]) == 0
    assert f"int8: {record.checkpoint_uri}  size" in capsys.readouterr().out
