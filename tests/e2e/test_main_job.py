"""The main job through the CLI, as the README runs it: `sora run CONFIG` (data -> pretrain ->
finetune -> evaluate -> report), then again: every stage finds its work done and redoes nothing."""

import json
import subprocess
import sys

import pytest
import yaml
from evalgen import finetune_settings, labelled_config
from traingen import train_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pipeline.config.run import RunConfig


def _config(tmp_path) -> RunConfig:
    data = labelled_config(tmp_path, root=f"file://{tmp_path}/root")
    raw = train_config(data, "e2e", max_steps=8).model_dump(mode="json")
    raw["finetune"] = finetune_settings(max_steps=6, eval_interval=3, checkpoint_interval=6)
    return RunConfig.model_validate(raw)


@pytest.mark.e2e
def test_sora_run_end_to_end_and_rerun_is_a_noop(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path).model_dump(mode="json")))
    root, runs = tmp_path / "root", tmp_path / "root" / "runs"
    command = [sys.executable, "-m", "pipeline.cli", "run", str(path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "dataset labelled v1 published" in first.stderr and "step 8/8" in first.stderr
    assert AutoModelForCausalLM.from_pretrained(runs / "e2e" / "hf").config.model_type == "sora"
    for init in ("pretrained", "scratch"):
        classifier = AutoModelForSequenceClassification.from_pretrained(runs / f"e2e-ft-full-{init}" / "hf")
        assert classifier.config.num_labels == 4
        results = json.loads((runs / "e2e" / "eval" / f"ft-full-{init}" / "results.json").read_text())
        assert 0 <= results["results"]["sora_classify"]["acc,none"] <= 1
    for name in ("pretrained", "scratch"):
        results = json.loads((runs / "e2e" / "eval" / name / "results.json").read_text())
        assert {"sora_heldout_ppl", "sora_cloze"} <= set(results["results"])
    table = first.stderr[first.stderr.index("evaluation") :]  # the console's eval table (suites without sora_)
    assert "pretrained" in table and "scratch" in table and "cloze" in table and "classify" in table
    first_report = (runs / "e2e" / "report.md").read_text()
    assert "| sora_classify | acc\u00a0↑ |" in first_report
    assert "![pretraining curves](report/pretrain.png)" in first_report
    html = (runs / "e2e" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html

    rebuilt_each_time = ("report", "report.md", "report.html", "timings")  # and config.json of the run
    stamps = {
        p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and not set(p.parts) & set(rebuilt_each_time)
    }
    second = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no new or changed sources; v1 is current" in second.stderr
    assert "step " not in second.stderr  # no training job started
    changed = [p for p, stamp in stamps.items() if p.stat().st_mtime_ns != stamp]
    assert changed == [p for p in changed if p.name == "config.json" and p.parent.name == "e2e"]

    # The report is rebuilt from stored files alone, identical to the one `sora run` wrote.
    report = (runs / "e2e" / "report.md").read_text()
    (runs / "e2e" / "report.md").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "report", "e2e", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (runs / "e2e" / "report.md").read_text() == report
