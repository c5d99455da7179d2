"""Evaluation stage through lm-eval, offline: built-in suites + a user task folder on a tiny exported
model, a tiny classifier through `sora-classifier`, results + samples + lineage on the store, the
eval table, and clear errors for unknown tasks and missing checkpoints."""

import json
import math
from pathlib import Path

import pytest
import torch
from evalgen import export_tiny

from pipeline.errors import UserError
from pipeline.evaluation.stage import evaluate_checkpoint_to_store, results_key
from pipeline.evaluation.table import eval_table

USER_TASK = "my_yes_no"


def write_user_task(directory: Path) -> Path:
    directory.mkdir(parents=True)
    data = directory / "qa.jsonl"
    rows = [{"q": f"Is {a} less than {b}?", "answer": int(a < b)} for a, b in [(1, 2), (5, 3), (2, 9), (8, 4), (3, 3)]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "my_yes_no.yaml").write_text(
        f"task: {USER_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}} Answer:'\n"
        "doc_to_choice: ['no', 'yes']\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return directory


def upload(store, directory: Path, prefix: str) -> str:
    for path in sorted(directory.iterdir()):
        store.upload_file(f"{prefix}/{path.name}", path)
    return store.uri(prefix)


def lineage(manifest):
    return {"dataset": manifest.dataset, "dataset_version": manifest.version}


def test_lm_and_classifier_through_lm_eval(small_dataset, tmp_path):
    config, store, manifest, _ = small_dataset
    tasks_dir = write_user_task(tmp_path / "user_tasks")
    config = config.model_copy(deep=True)
    config.eval.tasks = [USER_TASK]
    config.eval.include_paths = [str(tasks_dir)]
    config.eval.lm_classify = True  # every built-in suite through the LM too
    config.eval.limit = 12  # documents per task: seconds on a tiny model
    lm_uri = upload(store, export_tiny(tmp_path / "lm", manifest, store), "runs/evalrun/hf")

    results = evaluate_checkpoint_to_store(
        config, store, "evalrun", "pretrained", lm_uri, "causal_lm", lineage(manifest)
    )

    scores = results.results
    assert set(scores) == {"sora_heldout_ppl", "sora_cloze", "sora_classify", USER_TASK}
    ppl = scores["sora_heldout_ppl"]
    assert math.isfinite(ppl["word_perplexity,none"]) and ppl["word_perplexity,none"] > 1
    assert math.isfinite(ppl["byte_perplexity,none"]) and ppl["byte_perplexity,none"] > 1
    assert ppl["bits_per_byte,none"] > 0
    for task in ("sora_cloze", "sora_classify", USER_TASK):
        assert 0 <= scores[task]["acc,none"] <= 1 and scores[task]["acc_stderr,none"] >= 0
    assert results.n_samples["sora_cloze"]["effective"] == 12
    assert results.chance["sora_cloze"].uniform == 0.25
    assert results.chance["sora_classify"].uniform == 0.25
    assert results.lineage.to_dict() | lineage(manifest) == results.lineage.to_dict()
    assert results.lineage.checkpoint_uri == lm_uri
    assert results.lineage.tokenizer_sha256 == manifest.tokenizer.sha256
    for task in scores:
        samples = store.read(f"runs/evalrun/eval/pretrained/samples_{task}.jsonl").decode().splitlines()
        assert len(samples) == results.n_samples[task]["effective"]
    # Stored whole; evaluating the same name again does no work and returns the stored results.
    assert json.loads(store.read(results_key("evalrun", "pretrained"))) == results.to_dict()
    store.delete("runs/evalrun/hf/config.json")  # would fail if it evaluated again
    again = evaluate_checkpoint_to_store(config, store, "evalrun", "pretrained", lm_uri, "causal_lm", {})
    assert again == results
    with pytest.raises(UserError, match=r"already holds results of causal_lm .*evaluate .* under another name"):
        evaluate_checkpoint_to_store(config, store, "evalrun", "pretrained", store.uri("runs/x/hf"), "causal_lm", {})

    classes = results.suites.classes
    clf_dir = export_tiny(tmp_path / "clf", manifest, store, head="classifier", classes=classes)
    clf_uri = upload(store, clf_dir, "runs/evalrun/finetune/classify/scratch/hf")
    clf = evaluate_checkpoint_to_store(config, store, "evalrun", "classifier", clf_uri, "classifier", lineage(manifest))
    assert set(clf.results) == {"sora_classify"}
    accuracy = clf.results["sora_classify"]["acc,none"]
    assert 0 <= accuracy <= 1 and clf.results["sora_classify"]["acc_stderr,none"] > 0
    assert clf.lineage.kind == "classifier"

    rows = {(r["task"], r["metric"]): r for r in eval_table(store, "evalrun")}
    acc = rows["sora_classify", "acc"]
    assert set(acc["scores"]) == {"pretrained", "classifier"}
    assert acc["scores"]["classifier"]["value"] == accuracy and acc["scores"]["classifier"]["stderr"] > 0
    assert acc["chance"]["uniform"] == 0.25 and 0.25 <= acc["chance"]["majority"] <= 1
    assert rows["sora_heldout_ppl", "bits_per_byte"]["chance"] is None
    assert {metric for _, metric in rows} == {"acc", "acc_norm", "word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert rows[USER_TASK, "acc"]["scores"]["pretrained"]["value"] == scores[USER_TASK]["acc,none"]


def test_classifier_sees_inputs_cut_where_fine_tuning_cut_them(small_dataset, tmp_path):
    # A last-token classifier trained on 8-token inputs must be scored on the same 8 tokens: the
    # position it pools is the 8th, not wherever a longer snippet ends.
    from pipeline.evaluation.classifier_lm import SoraClassifierLM

    _, store, manifest, _ = small_dataset
    directory = export_tiny(tmp_path / "clf", manifest, store, "classifier", ["a", "b"], classifier_max_length=8)
    lm = SoraClassifierLM(str(directory))
    text = "def handler(request):\n    return request.headers.get('x') or default_value(request)\n"
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.max_length == 8 < len(ids)
    cut = lm.tokenizer.decode(ids[:8])
    assert lm.tokenizer(cut, add_special_tokens=False)["input_ids"] == ids[:8]
    scores = lm._log_probs([text, cut])
    assert torch.equal(scores[text], scores[cut])


def test_unknown_task_and_missing_checkpoint(small_dataset, tmp_path):
    config, store, manifest, _ = small_dataset
    config = config.model_copy(deep=True)
    lm_uri = upload(store, export_tiny(tmp_path / "lm", manifest, store), "runs/badrun/hf")
    config.eval.tasks = ["no_such_task_xyz", "sora_cloze", "another_missing_task"]
    with pytest.raises(UserError, match=r"does not know the task\(s\) no_such_task_xyz, another_missing_task"):
        evaluate_checkpoint_to_store(config, store, "badrun", "pretrained", lm_uri, "causal_lm", lineage(manifest))
    config.eval.tasks = []
    with pytest.raises(UserError, match=r"checkpoint .*runs/badrun/nothing is missing"):
        evaluate_checkpoint_to_store(
            config, store, "badrun", "pretrained", store.uri("runs/badrun/nothing"), "causal_lm", lineage(manifest)
        )
    assert store.list("runs/badrun/eval") == []
