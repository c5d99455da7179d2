"""The main job through the CLI, as the README runs it: `sora run CONFIG` (preprocess + pretrain),
then again (both stages resume: no new data, training already complete)."""

import json
import subprocess
import sys

import pytest
import yaml
from datagen import data_config, make_corpus
from traingen import train_config
from transformers import AutoModelForCausalLM


@pytest.mark.e2e
def test_sora_run_end_to_end_and_rerun_is_a_noop(tmp_path):
    make_corpus(tmp_path / "corpus")
    config = train_config(data_config(f"file://{tmp_path}/root", str(tmp_path / "corpus")), "e2e", max_steps=8)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [sys.executable, "-m", "pipeline.cli", "run", str(path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "dataset test v1 published" in first.stderr and "step 8/8" in first.stderr
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "root" / "runs" / "e2e" / "hf")
    assert model.config.model_type == "sora"

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no new or changed sources; v1 is current" in second.stderr
    segments = sorted((tmp_path / "root" / "runs" / "e2e" / "metrics").glob("part-*.jsonl"))
    rows = [line for segment in segments for line in segment.read_text().splitlines()]
    assert [json.loads(r)["step"] for r in rows] == list(range(1, 9))  # nothing retrained
