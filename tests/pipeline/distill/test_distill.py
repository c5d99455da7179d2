"""`sora distill` on the training job: 1 CPU worker, ZeRO-3, a frozen teacher; a worker killed
mid-run resumes from its checkpoint; the student and its baseline export loadable causal LMs; the
teacher is untouched; a second call does no work; evaluation and the report name both runs."""

import hashlib
import json

import pytest
import torch

from pipeline.distill.launch import distill
from pipeline.distill.report import distill_markdown
from pipeline.errors import UserError
from pipeline.evaluation.derived import distill_checkpoints
from pipeline.keys import RunKeys
from pipeline.run import record_config
from pipeline.train.metrics import read_rows

pytestmark = pytest.mark.distributed

RUNS = {"distilled": "base-distill-half", "baseline": "base-distill-half-baseline"}


def _digests(store, prefix):
    return {key: hashlib.sha256(store.read(key)).hexdigest() for key in store.list(prefix)}


def _load_export(store, run, tmp_path):
    from sora import SoraForCausalLM

    target = tmp_path / run
    for key in store.list(RunKeys(run).export):
        store.download_file(key, target / key.rsplit("/", 1)[-1])
    return SoraForCausalLM.from_pretrained(target), json.loads((target / "sora_export.json").read_text())


def test_distill_trains_student_and_baseline_resumes_and_skips(teacher_run, tmp_path, monkeypatch):
    config, store = teacher_run
    teacher = _digests(store, RunKeys("base").export)
    monkeypatch.setenv("SORA_KILL_WORKER", "0:4")  # fires once: in the distilled run, after step 3's commit
    monkeypatch.setenv("SORA_FAULT_DIR", str(tmp_path))
    outcome = distill(config, quiet=True)
    assert set(outcome) == set(RUNS) and (tmp_path / "killed-0-4").exists()
    models = {}
    for kind, run in RUNS.items():
        rows = read_rows(store, RunKeys(run).metrics)
        assert [r["step"] for r in rows] == list(range(1, 7))  # no step lost or repeated across the restart
        assert rows[-1]["tokens"] == 6 * 8 * 32 and rows[-1]["val_loss"] > 0
        models[kind], info = _load_export(store, run, tmp_path)
        assert info["step"] == 6 and info["dataset"] == "labelled"
        assert info["distill"]["kl_weight"] == (0.5 if kind == "distilled" else 0.0)
        student = models[kind].config
        assert (student.num_hidden_layers, student.hidden_size, student.vocab_size) == (2, 32, 400)
    # Same initialization and data, another loss: the weights part ways.
    embeddings = [m.model.embed_tokens.weight for m in models.values()]
    assert not torch.equal(*embeddings)
    assert _digests(store, RunKeys("base").export) == teacher  # the teacher is never written

    again = distill(config, quiet=True)  # a second call does no work
    assert all(result.get("skipped") for result in again.values())
    hotter = config.model_copy(update={"distill": config.distill.model_copy(update={"temperature": 4.0})})
    with pytest.raises(UserError, match=r"base-distill-half'.*temperature: 2.0 -> 4.0.*--restart"):
        distill(hotter, quiet=True)  # the finished export was distilled at T 2: not skipped as if current

    checkpoints = distill_checkpoints(config, store)
    assert {name: kind for name, (_, kind, _) in checkpoints.items()} == {
        "distilled": "causal_lm",
        "distill-baseline": "causal_lm",
    }
    assert all(store.exists(f"{store.key_of(uri)}/config.json") for uri, _, _ in checkpoints.values())
    record_config(store, config)
    section = distill_markdown(store, "base")
    assert section.startswith("## Distillation") and all(f"`{run}`" in section for run in RUNS.values())
